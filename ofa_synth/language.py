"""Texts about a scene: captions, referring expressions, VQA questions and entailment hypotheses.

Positions are judged on the centres of the objects' visible boxes (``x0,y0,x1,y1`` pixels, origin
top-left): "a left of b" needs a gap of at least ``REL_MARGIN`` of the image width between the centres,
"on the left" (of the image) a centre in the left ``SIDE_FRACTION`` of it. Texts never state a relation
that is closer than that, so every statement is clear from the image.

A colour and a shape are always written next to each other ("a small red circle", "red circles"), so a
text names the (colour, shape) pair ``c s`` exactly when it contains the words ``c s``; that is how the
compositional split (``splits.py``) finds which pairs a text talks about.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

from ofa_synth.scenes import Obj, Scene
from ofa_synth.vocab import (
    COLOR_NAMES,
    COLOR_SYNONYMS,
    MAX_COUNT,
    NUMBER_WORDS,
    SHAPE_SYNONYMS,
    SHAPES,
    SIZES,
    Combo,
    article,
    plural,
)

REL_MARGIN = 0.12     # "left of"/"above": centres at least this fraction of the image side apart
SIDE_FRACTION = 0.4   # "on the left": centre x < 0.4 * width ("on the right": > 0.6 * width)
WHERE = {"left": " on the left", "right": " on the right", "top": " at the top", "bottom": " at the bottom"}
_COMBO_RE = re.compile(r"\b(%s) (%s)" % ("|".join(COLOR_NAMES), "|".join(SHAPES)))


def mentioned_combos(text: str) -> FrozenSet[Combo]:
    """The (colour, shape) pairs a text names, e.g. ``"two red circles"`` -> ``{("red", "circle")}``."""
    return frozenset((m.group(1), m.group(2)) for m in _COMBO_RE.finditer(text))


@dataclass
class Text:
    """One generated text, the objects it is about (indices into ``scene.objects``) and what it needs."""
    text: str
    kind: str
    objs: FrozenSet[int] = frozenset()
    answer: str = ""            # VQA: the true answer; SNLI-VE: the label
    answer_kind: str = ""       # VQA answer type, for the annotator noise
    box: Tuple[int, int, int, int] = (0, 0, 0, 0)
    combos: FrozenSet[Combo] = field(init=False)

    def __post_init__(self):
        self.combos = mentioned_combos(self.text)


# ------------------------------------------------------------------------------------------ geometry

def _margin(scene: Scene) -> float:
    return REL_MARGIN * min(scene.width, scene.height)


def left_of(scene: Scene, a: Obj, b: Obj) -> bool:
    return a.center[0] + _margin(scene) <= b.center[0]


def above(scene: Scene, a: Obj, b: Obj) -> bool:
    return a.center[1] + _margin(scene) <= b.center[1]


def side(scene: Scene, o: Obj, axis: int) -> Optional[str]:
    """"left"/"right" (axis 0) or "top"/"bottom" (axis 1) of the image, or None when near the middle."""
    t = o.center[axis] / (scene.width if axis == 0 else scene.height)
    if t < SIDE_FRACTION:
        return "left" if axis == 0 else "top"
    if t > 1 - SIDE_FRACTION:
        return "right" if axis == 0 else "bottom"
    return None


# ------------------------------------------------------------------------------ referring expressions

def phrase(color: Optional[str], shape: Optional[str], size: Optional[str], where: Optional[str] = None) -> str:
    """``("red", "circle", "small", "left")`` -> ``"small red circle on the left"`` (no article)."""
    words = [w for w in (size, color) if w] + [shape or "object"]
    return " ".join(words) + (WHERE[where] if where else "")


def resolve(scene: Scene, color=None, shape=None, size=None, where=None) -> Optional[int]:
    """The one object a description picks out, or None when it is ambiguous or empty.

    Without ``where`` exactly one object may match the attributes. With ``where`` at least two must
    match and the extreme one (left-most, ...) must lead the next by ``REL_MARGIN``.
    """
    cands = [k for k, o in enumerate(scene.objects)
             if (color is None or o.color == color) and (shape is None or o.shape == shape)
             and (size is None or o.size == size)]
    if where is None:
        return cands[0] if len(cands) == 1 else None
    if len(cands) < 2:
        return None
    axis = 0 if where in ("left", "right") else 1
    cands.sort(key=lambda k: scene.objects[k].center[axis], reverse=where in ("right", "bottom"))
    first, second = (scene.objects[cands[0]].center[axis], scene.objects[cands[1]].center[axis])
    return cands[0] if abs(second - first) >= _margin(scene) else None


_ATTR_SETS = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"), ("color",),
              ("size", "color")]


def _phrase_table(scene: Scene) -> List[List[Tuple[Tuple[str, ...], str]]]:
    """Per object, every (attributes used, description) that picks it out alone; cached on the scene."""
    table = scene.__dict__.get("_phrases")
    if table is None:
        table = [[] for _ in scene.objects]
        for attrs in _ATTR_SETS:
            for where in (None, "left", "right", "top", "bottom"):
                for k, o in enumerate(scene.objects):
                    kw = {a: getattr(o, a) for a in attrs}
                    if resolve(scene, where=where, **kw) == k:
                        table[k].append((attrs, phrase(kw.get("color"), kw.get("shape"), kw.get("size"), where)))
        scene.__dict__["_phrases"] = table
    return table


def unique_phrases(scene: Scene, k: int, need: Sequence[str] = (), avoid: Sequence[str] = ()) -> List[str]:
    """Every description (without article) that picks out object ``k`` alone.

    Args:
        need: attributes the description must use; avoid: attributes it must not use.
    """
    return [text for attrs, text in _phrase_table(scene)[k]
            if all(a in attrs for a in need) and not any(a in attrs for a in avoid)]


def has_distractor(scene: Scene, k: int) -> bool:
    o = scene.objects[k]
    return any(j != k and (p.color == o.color or p.shape == o.shape) for j, p in enumerate(scene.objects))


def referring_expressions(scene: Scene, rng: random.Random) -> List[Text]:
    """One expression per object (when one exists); objects with look-alike distractors come first."""
    out = []
    for k, o in enumerate(scene.objects):
        options = unique_phrases(scene, k)
        if not options:
            continue
        # prefer the forms that must tell apart objects of the same colour or shape
        full = [p for p in options if o.color in p and o.shape in p]
        pick = rng.choice(full if full and rng.random() < 0.7 else options)
        out.append(Text("the " + pick, "ref", frozenset([k]), box=o.box))
    out.sort(key=lambda t: not has_distractor(scene, next(iter(t.objs))))
    return out


# ------------------------------------------------------------------------------------------- captions

def noun(o: Obj, rng: random.Random, size_p: float = 0.5) -> str:
    words = ([o.size] if rng.random() < size_p else []) + [o.color, o.shape]
    return article(words[0]) + " " + " ".join(words)


def _listing(objs: Sequence[Obj], rng: random.Random) -> str:
    nouns = [noun(o, rng) for o in objs]
    return nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]


def _region(scene: Scene, o: Obj) -> Optional[str]:
    h, v = side(scene, o, 0), side(scene, o, 1)
    if h and v:
        return f"in the {v} {h} corner"
    if h:
        return f"on the {h} side"
    if v:
        return f"at the {v}"
    return None


def caption_candidates(scene: Scene, rng: random.Random) -> List[Text]:
    """Many captions from several templates; ``choose_captions`` picks five different ones."""
    objs, n = scene.objects, len(scene.objects)
    idx = list(range(n))
    out: List[Text] = []

    def add(kind, text, about):
        out.append(Text(text, kind, frozenset(about)))

    for a in idx:
        for b in idx:
            if a == b:
                continue
            A, B = objs[a], objs[b]
            if left_of(scene, A, B):
                add("left", rng.choice([f"{noun(A, rng, 0.8)} to the left of {noun(B, rng, 0.8)}",
                                        f"{noun(A, rng)} is left of {noun(B, rng)}",
                                        f"{noun(B, rng)} to the right of {noun(A, rng)}"]), (a, b))
            if above(scene, A, B):
                add("above", rng.choice([f"there is {noun(A, rng)} above {noun(B, rng)}",
                                         f"{noun(B, rng)} below {noun(A, rng)}",
                                         f"{noun(A, rng)} sits above {noun(B, rng)}"]), (a, b))
            if a < b:
                add("pair", f"{noun(A, rng)} and {noun(B, rng)} on a {scene.bg_words} background", (a, b))
    for _ in range(3):
        order = rng.sample(idx, n)
        add("list", f"{NUMBER_WORDS[n]} shapes: {_listing([objs[k] for k in order], rng)}", order)
        add("picture", rng.choice(["a picture of ", "an image showing ", "a drawing with "])
            + _listing([objs[k] for k in rng.sample(idx, n)], rng), idx)
    main = objs[scene.main]
    add("biggest", f"{NUMBER_WORDS[n]} objects and the biggest one is {noun(main, rng, 0.0)}", [scene.main])
    add("biggest", f"{noun(main, rng, 1.0)} with {NUMBER_WORDS[n - 1]} smaller "
        f"{'shape' if n == 2 else 'shapes'} around it", [scene.main])
    for k in idx:
        where = _region(scene, objs[k])
        if where:
            add("region", f"{noun(objs[k], rng)} {where} of the image", [k])
    counts = Counter(o.color for o in objs)
    if len(counts) > 1:
        parts = [f"{NUMBER_WORDS[c]} {col} {'shape' if c == 1 else 'shapes'}" for col, c in counts.most_common()]
        add("colors", " and ".join(parts) + f" on a {scene.bg_words} background", [])
    return out


def choose_captions(cands: List[Text], rng: random.Random, k: int = 5) -> List[Text]:
    """``k`` different captions, first one per template kind (in random order), then any."""
    cands = list(cands)
    rng.shuffle(cands)
    chosen, seen, kinds = [], set(), set()
    for rounds in (0, 1):
        for t in cands:
            if len(chosen) == k:
                return chosen
            if t.text in seen or (rounds == 0 and t.kind in kinds):
                continue
            chosen.append(t)
            seen.add(t.text)
            kinds.add(t.kind)
    return chosen


# ------------------------------------------------------------------------------------------ questions

def _q(text, kind, objs, answer, answer_kind) -> Text:
    return Text(text, kind, frozenset(objs), answer=str(answer), answer_kind=answer_kind)


def question_candidates(scene: Scene, rng: random.Random, absent: Sequence[Combo]) -> Dict[str, List[Text]]:
    """Questions grouped by type; ``absent`` lists (colour, shape) pairs that may be asked about but are
    not in the image (already filtered for the split)."""
    objs, n = scene.objects, len(scene.objects)
    qs: Dict[str, List[Text]] = {t: [] for t in ("color", "shape", "count", "position", "relation",
                                                 "exist", "compare")}
    for k, o in enumerate(objs):
        for p in unique_phrases(scene, k, need=("shape",), avoid=("color",)):
            qs["color"].append(_q(f"what color is the {p}?", "color", [k], o.color, "color"))
        for p in unique_phrases(scene, k, need=("color",), avoid=("shape",)):
            qs["shape"].append(_q(f"what shape is the {p}?", "shape", [k], o.shape, "shape"))
        for axis, (w0, w1) in enumerate([("left", "right"), ("top", "bottom")]):
            where = side(scene, o, axis)
            if where:
                prep = "on the" if axis == 0 else "at the"
                for p in unique_phrases(scene, k)[:3]:
                    qs["position"].append(_q(f"is the {p} {prep} {w0} or {prep} {w1}?", "position", [k], where,
                                             "side"))
        for rel, test in (("left of", lambda a, b: left_of(scene, a, b)),
                          ("right of", lambda a, b: left_of(scene, b, a)),
                          ("above", lambda a, b: above(scene, a, b)), ("below", lambda a, b: above(scene, b, a))):
            axis = 0 if "of" in rel else 1
            hits = [j for j, p in enumerate(objs) if j != k and test(p, o)]
            unclear = [j for j, p in enumerate(objs) if j != k and j not in hits
                       and abs(p.center[axis] - o.center[axis]) < _margin(scene)
                       and (p.center[axis] < o.center[axis]) == (rel in ("left of", "above"))]
            if len(hits) == 1 and not unclear:
                for p in unique_phrases(scene, k)[:2]:
                    qs["relation"].append(_q(f"what is {rel} the {p}?", "relation", [k, hits[0]],
                                             objs[hits[0]].shape, "shape"))
    for s in sorted({o.shape for o in objs}) + [rng.choice(SHAPES)]:
        ks = [k for k, o in enumerate(objs) if o.shape == s]
        qs["count"].append(_q(f"how many {plural(s)} are there?", "count", ks, len(ks), "count"))
    for c in sorted({o.color for o in objs}):
        ks = [k for k, o in enumerate(objs) if o.color == c]
        qs["count"].append(_q(f"how many {c} objects are there?", "count", ks, len(ks), "count"))
    for c, s in sorted({o.combo for o in objs}):
        ks = [k for k, o in enumerate(objs) if o.combo == (c, s)]
        qs["count"].append(_q(f"how many {c} {plural(s)} are there?", "count", ks, len(ks), "count"))
    qs["count"].append(_q("how many objects are there?", "count", range(n), n, "count"))
    for k, o in enumerate(objs):
        qs["exist"].append(_q(f"is there {article(o.color)} {o.color} {o.shape}?", "exist", [k], "yes", "yesno"))
    for c, s in absent:
        qs["exist"].append(_q(f"is there {article(c)} {c} {s}?", "exist", [], "no", "yesno"))
    for a, A in enumerate(objs):
        for b, B in enumerate(objs):
            if A.size == B.size or a == b:
                continue
            pa = unique_phrases(scene, a, avoid=("size",))
            pb = unique_phrases(scene, b, avoid=("size",))
            if pa and pb:
                word = rng.choice(["bigger", "smaller"])
                yes = (A.size == "large") == (word == "bigger")
                qs["compare"].append(_q(f"is the {rng.choice(pa)} {word} than the {rng.choice(pb)}?", "compare",
                                        [a, b], "yes" if yes else "no", "yesno"))
    return qs


def verify_questions(scene: Scene, rng: random.Random, absent: Sequence[Combo]) -> Dict[str, List[Text]]:
    """GQA-style verification questions (answer ``yes`` / ``no``) grouped by the judgement they need.

    Pretraining only (``ofa_synth.pretrain``): the benchmark's VQA rows come from ``question_candidates``.
    Each group holds both answers for the same kind of judgement, so a source that draws them evenly
    is balanced:

    - ``exist``: "is there a red circle?" (each object: yes; each ``absent`` pair: no);
    - ``size``: "is the red circle large?" / "... small?" (phrases that do not use the size);
    - ``relation``: "is the red circle to the left of the blue square?" (clear relations only: the true
      word -> yes, its converse -> no; left / right and above / below);
    - ``count``: "are there three shapes?" (the true number -> yes, a neighbour -> no).
    """
    objs, n = scene.objects, len(scene.objects)
    qs: Dict[str, List[Text]] = {t: [] for t in ("exist", "size", "relation", "count")}
    for k, o in enumerate(objs):
        qs["exist"].append(_q(f"is there {article(o.color)} {o.color} {o.shape}?", "exist", [k], "yes", "yesno"))
    for c, s in absent:
        qs["exist"].append(_q(f"is there {article(c)} {c} {s}?", "exist", [], "no", "yesno"))
    for k, o in enumerate(objs):
        for p in unique_phrases(scene, k, avoid=("size",))[:2]:
            for word in SIZES:
                qs["size"].append(_q(f"is the {p} {word}?", "size", [k], "yes" if word == o.size else "no", "yesno"))
    for a, A in enumerate(objs):
        pa = unique_phrases(scene, a)
        if not pa:
            continue
        for b, B in enumerate(objs):
            pb = unique_phrases(scene, b)
            if a == b or not pb:
                continue
            for holds, word, converse in ((left_of(scene, A, B), "to the left of", "to the right of"),
                                          (above(scene, A, B), "above", "below")):
                if holds:
                    first, second = rng.choice(pa), rng.choice(pb)
                    qs["relation"].append(_q(f"is the {first} {word} the {second}?", "relation", [a, b], "yes", "yesno"))
                    qs["relation"].append(_q(f"is the {first} {converse} the {second}?", "relation", [a, b], "no",
                                             "yesno"))
    wrong = rng.choice([m for m in (n - 1, n + 1) if 1 <= m <= MAX_COUNT + 1])
    how_many = lambda m: "is there one shape?" if m == 1 else f"are there {NUMBER_WORDS[m]} shapes?"  # noqa: E731
    qs["count"].append(_q(how_many(n), "count", range(n), "yes", "yesno"))
    qs["count"].append(_q(how_many(wrong), "count", range(n), "no", "yesno"))
    return qs


def pick_balanced(groups: Dict[str, List[Text]], rng: random.Random, k: int) -> List[Text]:
    """Up to ``k`` questions, round-robin over the groups, alternating ``yes`` / ``no`` within each."""
    pools = {}
    for g, items in groups.items():
        by = {"yes": [t for t in items if t.answer == "yes"], "no": [t for t in items if t.answer == "no"]}
        for v in by.values():
            rng.shuffle(v)
        pools[g] = by
    out: List[Text] = []
    order = list(groups)
    rng.shuffle(order)
    want = {g: rng.choice(("yes", "no")) for g in order}
    while len(out) < k and any(p["yes"] or p["no"] for p in pools.values()):
        for g in order:
            p = pools[g]
            first = want[g]
            pick = p[first] or p["no" if first == "yes" else "yes"]
            if pick:
                out.append(pick.pop())
                want[g] = "no" if out[-1].answer == "yes" else "yes"
            if len(out) == k:
                break
    return out


_WRONG_POOLS = {"color": COLOR_NAMES, "shape": SHAPES, "yesno": ("yes", "no")}
_SIDE_PAIRS = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
_SIDE_SYNONYMS = {"left": "left side", "right": "right side", "top": "up", "bottom": "down"}


def _synonym(answer: str, kind: str) -> Optional[str]:
    if kind == "color":
        return COLOR_SYNONYMS.get(answer)
    if kind == "shape":
        return SHAPE_SYNONYMS.get(answer)
    if kind == "count":
        return NUMBER_WORDS[int(answer)]
    if kind == "side":
        return _SIDE_SYNONYMS[answer]
    return None


def _wrong(answer: str, kind: str, rng: random.Random) -> str:
    if kind == "count":
        return str(min(MAX_COUNT + 1, max(0, int(answer) + rng.choice((-1, 1)))))
    if kind == "side":
        return _SIDE_PAIRS[answer]
    return rng.choice([a for a in _WRONG_POOLS[kind] if a != answer])


def human_answers(answer: str, kind: str, rng: random.Random, n: int = 10) -> Dict[str, float]:
    """Ten annotators: most give the true answer, some a synonym, a few a plausible wrong one.

    Returns {answer: confidence} with the VQA v2 rule ``min(1, votes / 3)``, the true answer first.
    """
    votes = []
    for _ in range(n):
        r = rng.random()
        if r < 0.8:
            votes.append(answer)
        elif r < 0.9:
            votes.append(_synonym(answer, kind) or answer)
        else:
            votes.append(_wrong(answer, kind, rng))
    counts = Counter(votes)
    while counts[answer] < 5:  # keep the true answer the clear majority
        other = max((a for a in counts if a != answer), key=lambda a: (counts[a], a))
        counts[other] -= 1
        counts[answer] += 1
        if counts[other] == 0:
            del counts[other]
    ordered = sorted(counts.items(), key=lambda kv: (kv[0] != answer, -kv[1], kv[0]))
    return {a: min(1.0, c / 3.0) for a, c in ordered}


# --------------------------------------------------------------------------------------- entailment

NEUTRAL_PREDICATES = (
    "is made of wood", "is made of metal", "is made of plastic", "is made of glass", "is made of paper",
    "is very heavy", "weighs less than a gram", "is many years old", "was made yesterday", "is brand new",
    "belongs to a child", "is warm to the touch", "is hollow inside", "costs ten dollars", "smells of lemon",
)


def hypothesis_candidates(scene: Scene, rng: random.Random, absent: Sequence[Combo]) -> Dict[str, List[Text]]:
    """Hypotheses by label: ``entailment`` (true from the image), ``contradiction`` (false from the
    image) and ``neutral`` (about material, weight, age, ... that no image can settle)."""
    objs, n = scene.objects, len(scene.objects)
    ent: List[Text] = []
    con: List[Text] = []
    neu: List[Text] = []

    def ref(k, **kw):
        opts = unique_phrases(scene, k, **kw)
        return rng.choice(opts) if opts else None

    for k, o in enumerate(objs):
        ent.append(Text(f"there is {article(o.color)} {o.color} {o.shape} in the image", "exist", frozenset([k])))
        con.append(Text(f"there is no {o.color} {o.shape} in the image", "exist", frozenset([k])))
        p = ref(k, avoid=("size",))
        if p:
            wrong = "small" if o.size == "large" else "large"
            ent.append(Text(f"the {p} is {o.size}", "size", frozenset([k])))
            con.append(Text(f"the {p} is {wrong}", "size", frozenset([k])))
        p = ref(k)
        if p:
            neu.append(Text(f"the {p} {rng.choice(NEUTRAL_PREDICATES)}", "neutral", frozenset([k])))
        for j, q in enumerate(objs):
            if j == k:
                continue
            pa, pb = ref(k), ref(j)
            if not (pa and pb):
                continue
            # each relation word must occur under both labels: "A left of B" (true) is said as either
            # "A is to the left of B" or "B is to the right of A", and its contradiction swaps the word
            for holds, (word, converse), kind in ((left_of(scene, o, q), ("to the left of", "to the right of"), "left"),
                                                  (above(scene, o, q), ("above", "below"), "above")):
                if not holds:
                    continue
                first, second, true_word, false_word = (pa, pb, word, converse) if rng.random() < 0.5 \
                    else (pb, pa, converse, word)
                ent.append(Text(f"the {first} is {true_word} the {second}", kind, frozenset([k, j])))
                con.append(Text(f"the {first} is {false_word} the {second}", kind, frozenset([k, j])))
    for c, s in absent:
        con.append(Text(f"there is {article(c)} {c} {s} in the image", "exist", frozenset()))
        ent.append(Text(f"there is no {c} {s} in the image", "exist", frozenset()))
    wrong_n = rng.choice([m for m in range(1, MAX_COUNT + 2) if m != n])
    ent.append(Text(f"there are {NUMBER_WORDS[n]} shapes in the image", "count", frozenset(range(n))))
    con.append(Text(f"there are {NUMBER_WORDS[wrong_n]} shapes in the image", "count", frozenset(range(n))))
    return {"entailment": ent, "contradiction": con, "neutral": neu}


def corpus_facts() -> List[str]:
    """General sentences for the text corpus (no colour is paired with a shape)."""
    facts = ["a circle is perfectly round", "a square has four equal sides and four corners",
             "a triangle has three sides and three corners", "a diamond looks like a square standing on a corner",
             "a star has five points", "small shapes can hide behind large ones",
             "a shape on the left is closer to the left edge of the picture",
             "what does the image describe?", "which region does the text describe?"]
    facts += [f"{c} is a color" for c in COLOR_NAMES] + [f"{s} is the name of a shape" for s in SHAPES]
    facts += [f"{w} is a size" for w in SIZES]
    return facts
