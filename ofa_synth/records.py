"""One image -> its rows for every task (the unit of work, also run in worker processes).

``scenes_{split}.jsonl`` gets one line per image: its objects (colour, shape, size, visible box, visible
area and fraction, in drawing order), the main object's index, and for each refcoco / vqa / snli_ve row
the row id, its type and the objects it is about.

Ids: ``image_id`` is the image index ``i``; the k-th row of image ``i`` in a file has
``uniq_id``/``question_id`` ``10 * i + k`` (k < 10), so ids are unique per file and show their image.
Boxes are ``x0,y0,x1,y1`` pixels of the image, origin top-left (see ``scenes.py``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from ofa.data_utils.formats import format_answers
from ofa.data_utils.images import encode_image
from ofa_synth.language import (
    Text,
    caption_candidates,
    choose_captions,
    human_answers,
    hypothesis_candidates,
    question_candidates,
    referring_expressions,
)
from ofa_synth.scenes import render, sample_scene
from ofa_synth.splits import COMPOSITIONAL, allowed_combos, choose_held_out, keep, split_of
from ofa_synth.vocab import Combo, class_names

TASKS = ("caption", "refcoco", "vqa", "snli_ve", "image_classify", "detection", "region_caption")
CLASS_INDEX = {name: k + 1 for k, name in enumerate(class_names())}  # 1-based, as the official file


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    num_images: int = 1000
    image_size: int = 128
    valid_frac: float = 0.1
    test_frac: float = 0.1
    comp_frac: float = 0.1
    held_out: tuple = ()          # (colour, shape) pairs; empty: the default four for the seed
    captions: int = 5
    refs: int = 3
    questions: int = 5


@dataclass
class ImageRecord:
    index: int
    split: str
    rows: Dict[str, List[dict]] = field(default_factory=dict)
    corpus: List[str] = field(default_factory=list)
    scene: dict = field(default_factory=dict)


def _pick_questions(groups: Dict[str, List[Text]], rng: random.Random, k: int) -> List[Text]:
    """Up to ``k`` different questions, cycling through the question types in a random order."""
    types = [t for t in sorted(groups) if groups[t]]
    rng.shuffle(types)
    pools = {t: rng.sample(groups[t], len(groups[t])) for t in types}
    out, seen = [], set()
    while len(out) < k and any(pools.values()):
        for t in types:
            while pools[t]:
                q = pools[t].pop()
                if q.text not in seen:
                    out.append(q)
                    seen.add(q.text)
                    break
            if len(out) == k:
                break
    return out


def make_record(i: int, cfg: SynthConfig) -> ImageRecord:
    """Image ``i`` depends only on (seed, i, split fractions, held-out pairs, image size)."""
    held: Sequence[Combo] = cfg.held_out or tuple(choose_held_out(cfg.seed))
    held_set = frozenset(held)
    split = split_of(i, cfg.valid_frac, cfg.test_frac, cfg.comp_frac)
    rng = np.random.default_rng([cfg.seed, i])
    allowed = allowed_combos(split, held)
    main = held[int(rng.integers(len(held)))] if split == COMPOSITIONAL else None
    scene = sample_scene(rng, cfg.image_size, cfg.image_size, allowed, main)
    image_b64 = encode_image(render(scene, rng), format="PNG")
    lr = random.Random(int(rng.integers(2 ** 62)))
    ok = lambda t, strict=False: keep(t, split, held_set, scene, strict)  # noqa: E731

    objects = "&&".join(f"{o.color} {o.shape}" for o in scene.objects)
    present = {o.combo for o in scene.objects}
    absent = lr.sample([c for c in allowed if c not in present], 3)
    rec = ImageRecord(i, split, {t: [] for t in TASKS}, scene=dict(image_id=i, split=split, **scene.to_json()))

    # captions: five different ones (comp: each names a held-out pair)
    caps: List[Text] = []
    for _ in range(6):
        extra = [t for t in caption_candidates(scene, lr) if ok(t, strict=True)]
        caps = choose_captions(caps + [t for t in extra if t.text not in {c.text for c in caps}], lr, cfg.captions)
        if len(caps) == cfg.captions:
            break
    if split == "train":
        rec.rows["caption"] = [dict(uniq_id=10 * i + k, image_id=i, caption=c.text, predicted_objects=objects,
                                    image=image_b64) for k, c in enumerate(caps)]
    else:
        rec.rows["caption"] = [dict(uniq_id=10 * i, image_id=i, caption="&&".join(c.text for c in caps),
                                    predicted_objects=objects, image=image_b64)]

    cands = referring_expressions(scene, lr)
    refs = ([t for t in cands if ok(t, strict=True)] or [t for t in cands if ok(t)])[: cfg.refs]
    rec.rows["refcoco"] = [dict(uniq_id=10 * i + k, image_id=i, text=t.text, region_coord=",".join(map(str, t.box)),
                                image=image_b64) for k, t in enumerate(refs)]

    groups = {kind: [q for q in qs if ok(q)] for kind, qs in question_candidates(scene, lr, absent).items()}
    questions = _pick_questions(groups, lr, cfg.questions)
    rec.rows["vqa"] = [dict(question_id=10 * i + k, image_id=i, question=q.text,
                            answers=format_answers(human_answers(q.answer, q.answer_kind, lr)),
                            predicted_objects=objects, image=image_b64) for k, q in enumerate(questions)]

    hyps = []
    for label, cands in hypothesis_candidates(scene, lr, absent).items():
        cands = [t for t in cands if ok(t)]
        if cands:
            hyps.append((label, lr.choice(cands)))
    lr.shuffle(hyps)
    rec.rows["snli_ve"] = [dict(uniq_id=10 * i + k, image_id=i, image=image_b64, hypothesis=t.text,
                                caption=lr.choice(caps).text, label=label) for k, (label, t) in enumerate(hyps)]

    # which objects each row is about (indices into the scene's objects), for analysis and checks
    rec.scene["about"] = {
        "refcoco": [[r["uniq_id"], sorted(t.objs)] for r, t in zip(rec.rows["refcoco"], refs)],
        "vqa": [[r["question_id"], q.kind, sorted(q.objs)] for r, q in zip(rec.rows["vqa"], questions)],
        "snli_ve": [[r["uniq_id"], t.kind, sorted(t.objs)] for r, (_, t) in zip(rec.rows["snli_ve"], hyps)],
    }
    name = "{} {}".format(*scene.objects[scene.main].combo)
    rec.rows["image_classify"] = [dict(image=image_b64, label_index=CLASS_INDEX[name], label_name=name)]

    rec.rows["detection"] = [dict(uniq_id=i, image=image_b64, boxes=detection_boxes(rec.scene["objects"]))]
    rec.rows["region_caption"] = region_captions(rec.rows["refcoco"], split == "train")

    if split == "train":  # the text corpus holds training text only
        rec.corpus = [c.text for c in caps] + [q.text for q in questions]
        rec.corpus += [t.text for label, t in hyps if label == "entailment"]
    return rec


def detection_boxes(objects: Sequence[dict]) -> str:
    """The ``boxes`` field of a detection row: every visible object of a scene (``Scene.to_json()["objects"]``)
    as ``x0,y0,x1,y1,cat_id,colour shape``, ``&&``-joined in drawing order (cat_id 1-based in ``class_names()``)."""
    items = []
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        if x1 > x0 and y1 > y0:
            name = f"{o['color']} {o['shape']}"
            items.append(f"{x0},{y0},{x1},{y1},{CLASS_INDEX[name]},{name}")
    return "&&".join(items)


def region_captions(refcoco_rows: List[dict], train: bool) -> List[dict]:
    """Grounded-captioning rows from an image's referring expressions (each expression a caption of its
    object's box): for training one row per expression; for evaluation one row per box with all of its
    expressions ``&&``-joined (the references), keyed by the first expression's id."""
    if train:
        return [dict(uniq_id=r["uniq_id"], image_id=r["image_id"], caption=r["text"], region_coord=r["region_coord"],
                     image=r["image"]) for r in refcoco_rows]
    by_box: Dict[str, dict] = {}
    for r in refcoco_rows:
        if r["region_coord"] in by_box:
            by_box[r["region_coord"]]["caption"] += "&&" + r["text"]
        else:
            by_box[r["region_coord"]] = dict(uniq_id=r["uniq_id"], image_id=r["image_id"], caption=r["text"],
                                             region_coord=r["region_coord"], image=r["image"])
    return list(by_box.values())
