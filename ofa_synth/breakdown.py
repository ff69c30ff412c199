"""Per-kind scores of an evaluation on the embedded benchmark: which kinds of question, hypothesis or
referring expression a model gets right.

A single number hides why a target is missed: an entailment accuracy of 0.70 may be "every neutral
hypothesis right, every image-dependent one at chance". The generator records, per image in
``scenes_{split}.jsonl``, the kind of every VQA question and entailment hypothesis it wrote
(``about.vqa`` / ``about.snli_ve``: ``[row id, kind, objects]``); referring expressions are grouped by
the description form, read from the text (which attributes it names: size, colour, shape; and whether
it picks the extreme one, "on the left", "at the top", ...).

Per-row scores come from ``ofa-evaluate``'s ``{split}_predict.json`` and the split's TSV:

- VQA: the official confidence-weighted score of the answer (``conf|!+answer`` pairs, column 4);
- entailment: 1 when the yes / no / maybe answer matches the label (last column);
- grounding: 1 when the predicted box hits the reference box by the official Acc@0.5 rule
  (``boxes.grounding_hits``; column 4, ``x0,y0,x1,y1`` in original-image pixels, as ``scenes.py`` writes).
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from ofa.data_utils.formats import parse_answers
from ofa_synth.vocab import COLOR_NAMES, SHAPES, SIZES

TSV_NAME = {"vqa_gen": "vqa", "snli_ve": "snli_ve", "refcoco": "refcoco"}  # benchmark file per task
SNLI_ANSWER = {"entailment": "yes", "contradiction": "no", "neutral": "maybe"}
_WHERE_RE = re.compile(r" (on the (left|right)|at the (top|bottom))$")


def expression_form(text: str) -> str:
    """The description form of a referring expression: the attributes it names, in the generator's order
    (size, colour, shape; ``object`` when no shape), plus ``+where`` for the extreme-position forms.

    ``"the small red circle on the left"`` -> ``"size+color+shape+where"``; ``"the red object"`` -> ``"color"``.
    """
    words = text.split()
    attrs = [name for name, vocab in (("size", SIZES), ("color", COLOR_NAMES), ("shape", SHAPES))
             if any(w in vocab for w in words)]
    return "+".join(attrs or ["none"]) + ("+where" if _WHERE_RE.search(text) else "")


def tsv_rows(path: Path) -> Iterable[List[str]]:
    """The tab-separated fields of every non-blank line of a benchmark TSV."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\n").split("\t")


def predictions(path: Path, id_key: str) -> Dict[str, dict]:
    """``id -> record`` of an ``ofa-evaluate`` ``{split}_predict.json`` (ids as strings)."""
    return {str(r[id_key]): r for r in json.loads(Path(path).read_text())}


def row_scores(task: str, predict_json: Path, tsv: Path) -> Dict[str, Tuple[float, str]]:
    """``row id -> (score in [0, 1], text)`` for the rows that have a prediction.

    Args:
        task: ``vqa_gen``, ``snli_ve`` or ``refcoco``.
        predict_json: ``ofa-evaluate``'s ``{split}_predict.json``.
        tsv: the evaluated split in the benchmark's layout (``{vqa,snli_ve,refcoco}_{split}.tsv``).
    """
    out: Dict[str, Tuple[float, str]] = {}
    if task == "vqa_gen":
        pred = predictions(predict_json, "question_id")
        for f in tsv_rows(tsv):
            if f[0] in pred:
                out[f[0]] = (parse_answers(f[3]).get(pred[f[0]]["answer"], 0.0), f[2])
    elif task == "snli_ve":
        pred = predictions(predict_json, "uniq_id")
        for f in tsv_rows(tsv):
            if f[0] in pred:
                out[f[0]] = (float(pred[f[0]]["answer"] == SNLI_ANSWER[f[-1]]), f[3])
    elif task == "refcoco":
        import torch

        from ofa.data_utils.boxes import grounding_hits  # the official Acc@0.5 rule, as ofa-evaluate scores it

        pred = predictions(predict_json, "uniq_id")
        rows = [f for f in tsv_rows(tsv) if f[0] in pred]
        if rows:
            hits = grounding_hits(torch.tensor([pred[f[0]]["box"] for f in rows], dtype=torch.float64),
                                  torch.tensor([[float(v) for v in f[3].split(",")] for f in rows], dtype=torch.float64))
            out = {f[0]: (float(h), f[2]) for f, h in zip(rows, hits.tolist())}
    else:
        raise ValueError(f"no per-kind breakdown for task {task!r}; tasks: vqa_gen, snli_ve, refcoco")
    return out


def load_scenes(scenes_jsonl: Path) -> Dict[str, dict]:
    """``image id -> scene record`` of a ``scenes_{split}.jsonl`` (ids as strings)."""
    with open(scenes_jsonl, encoding="utf-8") as f:
        return {str(s["image_id"]): s for s in map(json.loads, f)}


def row_kinds(task: str, scenes_jsonl: Path) -> Dict[str, str]:
    """``row id -> kind`` recorded by the generator (VQA question type, entailment hypothesis type)."""
    key = {"vqa_gen": "vqa", "snli_ve": "snli_ve"}[task]
    return {str(row_id): kind for scene in load_scenes(scenes_jsonl).values()
            for row_id, kind, _objs in scene.get("about", {}).get(key, [])}


def per_kind(scores: Dict[str, Tuple[float, str]], kind_of) -> Dict[str, Dict[str, float]]:
    """Group per-row scores: ``kind -> {"n": rows, "score": mean}``, kinds sorted by row count.

    Args:
        kind_of: ``(row id, text) -> kind``.
    """
    groups: Dict[str, List[float]] = defaultdict(list)
    for row_id, (score, text) in scores.items():
        groups[kind_of(row_id, text)].append(score)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return {k: {"n": len(v), "score": round(sum(v) / len(v), 4)} for k, v in ordered}


def breakdown(task: str, predict_json: Path, data_dir: Path, split: str) -> Dict[str, Dict[str, float]]:
    """Per-kind scores of one evaluated split of the benchmark in ``data_dir`` (see the module docstring)."""
    if task not in TSV_NAME:
        raise ValueError(f"no per-kind breakdown for task {task!r}; tasks: {', '.join(TSV_NAME)}")
    data_dir = Path(data_dir)
    tsv = data_dir / f"{TSV_NAME[task]}_{split}.tsv"
    scores = row_scores(task, Path(predict_json), tsv)
    if task == "refcoco":
        return per_kind(scores, lambda _id, text: expression_form(text))
    kinds = row_kinds(task, data_dir / f"scenes_{split}.jsonl")
    return per_kind(scores, lambda row_id, _text: kinds.get(row_id, "unknown"))


def grounding_anatomy(predict_json: Path, tsv: Path, scenes_jsonl: Path) -> Dict[str, Dict[str, float]]:
    """What each predicted box is, by the size of the object the row refers to (``small`` / ``large``, as
    the generator drew it) and over ``all`` rows: ``hit`` (Acc@0.5 on the referred object), ``other`` (no
    hit, but Acc@0.5 on another object of the scene: the wrong choice) or ``none`` (no object of the
    scene: a box between objects, such as an average of several). Fractions of ``n`` rows.

    The referred object is the scene object whose box equals the row's box (column 4, ``x0,y0,x1,y1``
    pixels, as ``scenes.py`` writes both); a row whose box is no object of its image raises ValueError.
    """
    import torch

    from ofa.data_utils.boxes import grounding_hits

    scenes = load_scenes(scenes_jsonl)
    pred = predictions(predict_json, "uniq_id")
    counts: Dict[str, Dict[str, int]] = {}
    for row_id, image_id, _text, box, *_ in tsv_rows(tsv):
        if row_id not in pred:
            continue
        objs = scenes[image_id]["objects"]
        gold = [float(v) for v in box.split(",")]
        target = [k for k, o in enumerate(objs) if [float(v) for v in o["box"]] == gold]
        if not target:
            raise ValueError(f"{tsv}: row {row_id}: box {box} is no object of image {image_id} in {scenes_jsonl}")
        hits = grounding_hits(torch.tensor([pred[row_id]["box"]] * len(objs), dtype=torch.float64),
                              torch.tensor([o["box"] for o in objs], dtype=torch.float64)).tolist()
        kind = "hit" if hits[target[0]] else ("other" if any(hits) else "none")
        for group in (objs[target[0]]["size"], "all"):
            c = counts.setdefault(group, {"n": 0, "hit": 0, "other": 0, "none": 0})
            c["n"] += 1
            c[kind] += 1
    return {g: {"n": c["n"], **{k: round(c[k] / c["n"], 4) for k in ("hit", "other", "none")}}
            for g, c in sorted(counts.items())}


def same_box_share(predict_json: Path, tsv: Path) -> Dict[str, float]:
    """Does the text change the box? Over the images whose grounding rows refer to at least two different
    objects (different target boxes), the fraction where every row got the same predicted box: 1.0 means the
    model ignores the expression, 0.0 that it answers each object differently (rightly or not).

    Returns ``{"images": number of such images, "same_box": fraction}`` (``same_box`` 0.0 without images).
    """
    by_image: Dict[str, List[Tuple[str, Tuple[float, ...]]]] = {}
    pred = predictions(predict_json, "uniq_id")
    for row_id, image_id, _text, box, *_ in tsv_rows(tsv):
        if row_id in pred:
            by_image.setdefault(image_id, []).append((box, tuple(float(v) for v in pred[row_id]["box"])))
    multi = [rows for rows in by_image.values() if len({gold for gold, _ in rows}) > 1]
    same = sum(len({p for _, p in rows}) == 1 for rows in multi)
    return {"images": len(multi), "same_box": round(same / len(multi), 4) if multi else 0.0}


def answer_table(task: str, predict_json: Path, data_dir: Path, split: str) -> Dict[str, Dict[str, int]]:
    """Which answer each kind got, against the true one: ``kind -> {"TRUE->PREDICTED": rows}``.

    Shows a model that answers from the prior: VQA existence questions all answered "no" give only
    ``"yes->no"`` and ``"no->no"``. VQA: the kinds whose true answers (the most confident) are all yes / no;
    entailment: every kind, the true answer being ``yes`` / ``no`` / ``maybe`` for entailment /
    contradiction / neutral.
    """
    if task not in ("vqa_gen", "snli_ve"):
        raise ValueError(f"no answer table for task {task!r}; tasks: vqa_gen, snli_ve")
    data_dir = Path(data_dir)
    kinds = row_kinds(task, data_dir / f"scenes_{split}.jsonl")
    pred = predictions(Path(predict_json), "question_id" if task == "vqa_gen" else "uniq_id")
    table: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    other = set()
    for f in tsv_rows(data_dir / f"{TSV_NAME[task]}_{split}.tsv"):
        if f[0] not in pred:
            continue
        if task == "vqa_gen":
            refs = parse_answers(f[3])
            truth = max(refs, key=refs.get)
        else:
            truth = SNLI_ANSWER[f[-1]]
        kind = kinds.get(f[0], "unknown")
        if task == "vqa_gen" and truth not in ("yes", "no"):
            other.add(kind)
        table[kind][f"{truth}->{pred[f[0]]['answer']}"] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(table.items()) if k not in other}
