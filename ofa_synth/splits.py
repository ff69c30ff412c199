"""The four splits: train, valid, an i.i.d. held-out test, and a compositional test.

A few (colour, shape) pairs are *held out*: each uses a different colour and a different shape, so every
held-out colour and shape still appears in training with other partners.

- ``train``: scenes never contain a held-out pair, and no text names one (not even "is there a green
  triangle?" answered "no"). The text corpus is built from training text only.
- ``valid``: in-distribution, drawn exactly like train (for early stopping and checkpoint choice).
- ``test``: the held-out test split, drawn exactly like train from images never trained on (the
  benchmark's targets are measured here, as on a real benchmark's test split).
- ``comp``: compositional generalisation. Every scene's main object (the largest one, which is also
  the classification label) is a held-out pair; captions and referring expressions name a held-out
  pair, and every question and hypothesis is about a held-out object or names a held-out pair. A
  closed-set classifier cannot score here by construction (its labels never occur in training); the
  split measures what transfers to unseen combinations.

Image ``i`` goes to a split by a fixed stride pattern (``split_of``), so the split of an image, and
hence the image itself, does not depend on how many images are made.
"""
from __future__ import annotations

import math
from typing import FrozenSet, List, Sequence

import numpy as np

from ofa_synth.language import Text
from ofa_synth.scenes import Scene, all_combos
from ofa_synth.vocab import COLOR_NAMES, SHAPES, Combo

SPLITS = ("train", "valid", "test", "comp")
COMPOSITIONAL = "comp"
_HOLDOUT_STREAM = 1_000_003  # the rng stream that chooses the held-out pairs (images use 0..N-1)


def choose_held_out(seed: int, k: int = 4) -> List[Combo]:
    """``k`` (colour, shape) pairs with distinct colours and distinct shapes, fixed by the seed."""
    if not 1 <= k <= min(len(COLOR_NAMES), len(SHAPES)) - 1:
        raise ValueError(f"the number of held-out pairs must be in 1..{min(len(COLOR_NAMES), len(SHAPES)) - 1}")
    rng = np.random.default_rng([seed, _HOLDOUT_STREAM])
    colors = [COLOR_NAMES[int(j)] for j in rng.permutation(len(COLOR_NAMES))]
    shapes = [SHAPES[int(j)] for j in rng.permutation(len(SHAPES))]
    return sorted(zip(colors[:k], shapes[:k]))


def _hits(i: int, frac: float, phase: float) -> bool:
    return math.floor((i + 1) * frac + phase) > math.floor(i * frac + phase)


def split_of(i: int, valid_frac: float, test_frac: float, comp_frac: float = 0.1) -> str:
    """Every ``1/comp_frac``-th image is comp, every ``1/test_frac``-th (a quarter period later) test and
    every ``1/valid_frac``-th (half a period later) valid; with equal fractions <= 0.25 they never collide."""
    if _hits(i, comp_frac, 0.0):
        return COMPOSITIONAL
    if _hits(i, test_frac, 0.25):
        return "test"
    if _hits(i, valid_frac, 0.5):
        return "valid"
    return "train"


def check_fractions(valid_frac: float, test_frac: float, comp_frac: float) -> None:
    """Each fraction in [0, 0.25] (so that the stride patterns never collide)."""
    for name, f in (("valid", valid_frac), ("test", test_frac), ("comp", comp_frac)):
        if not 0 <= f <= 0.25:
            raise ValueError(f"the {name} fraction must be in [0, 0.25], got {f}")


def allowed_combos(split: str, held_out: Sequence[Combo]) -> List[Combo]:
    """The pairs that objects (and absent-object questions) may take in a split."""
    return all_combos() if split == COMPOSITIONAL else [c for c in all_combos() if c not in held_out]


def keep(t: Text, split: str, held_out: FrozenSet[Combo], scene: Scene, strict: bool = False) -> bool:
    """Whether a text may appear in ``split``.

    Train/valid/test: it must not name a held-out pair. Comp: it must name one, or (unless ``strict``)
    be about an object that is one.
    """
    if split != COMPOSITIONAL:
        return not (t.combos & held_out)
    if t.combos & held_out:
        return True
    return not strict and any(scene.objects[k].combo in held_out for k in t.objs)
