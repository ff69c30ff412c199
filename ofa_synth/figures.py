"""Pictures of a main job: its learning curves, and a few test images per task with what the model predicted.

Both need matplotlib (the ``synth`` extra); without it they draw nothing and return ``None``.

``plot_learning_curves(curves, out_png)``: per task, the train loss and the validation metric against the
update (``curves``: ``curves.curves_from_log`` per task).

``draw_predictions(task, tsv, predict_json, out_png)`` reads ``ofa-evaluate``'s ``test_predict.json`` and
the evaluated benchmark TSV, and draws the first ``n`` predicted rows: grounding shows the reference box
(white, dashed) and the predicted one (green when it hits by the official Acc@0.5 rule, else red); the closed-set tasks
write the question or hypothesis, the predicted answer and the true one (VQA: the most confident
annotator answer, and the prediction's official VQA score); captioning writes the generated caption above
one reference. A title is green when the prediction is right (VQA: it is the most confident answer), red
when it is wrong.

Boxes are ``x0,y0,x1,y1`` in pixels of the original image (origin top-left), as the benchmark writes
them and ``ofa-evaluate`` predicts them.
"""
from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ofa.data_utils.formats import get_schema, parse_answers
from ofa.io_utils import atomic_output
from ofa_synth.breakdown import SNLI_ANSWER, predictions, tsv_rows

Box = Tuple[float, float, float, float]


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, quiet (importing fairseq leaves the root logger at
    DEBUG); ``None`` without matplotlib."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Shown:
    """What one panel shows: the text lines, whether the prediction is right, and boxes to draw."""

    lines: Sequence[str]
    correct: Optional[bool]
    truth_box: Optional[Box] = None
    pred_box: Optional[Box] = None


def _grounding(row: Dict[str, str], pred: dict) -> Shown:
    import torch

    from ofa.data_utils.boxes import grounding_hits  # the official Acc@0.5 rule, as ofa-evaluate scores it

    truth = tuple(float(v) for v in row["region_coord"].split(","))
    box = tuple(float(v) for v in pred["box"])
    hit = bool(grounding_hits(torch.tensor([box], dtype=torch.float64), torch.tensor([truth], dtype=torch.float64))[0])
    return Shown([row["text"]], hit, truth, box)


def _vqa(row: Dict[str, str], pred: dict) -> Shown:
    answers = parse_answers(row["answers"])
    best = max(answers, key=answers.get)
    score = answers.get(pred["answer"], 0.0)  # the official VQA score of the prediction
    return Shown([row["question"], f"pred: {pred['answer']} (score {score:.1f})", f"true: {best}"],
                 pred["answer"] == best)


def _entailment(row: Dict[str, str], pred: dict) -> Shown:
    truth = SNLI_ANSWER[row["label"]]
    return Shown([row["hypothesis"], f"pred: {pred['answer']}", f"true: {truth}"], pred["answer"] == truth)


def _classify(row: Dict[str, str], pred: dict) -> Shown:
    return Shown([f"pred: {pred['answer']}", f"true: {row['label_name']}"], pred["answer"] == row["label_name"])


def _caption(row: Dict[str, str], pred: dict) -> Shown:
    return Shown([f"pred: {pred['caption']}", f"ref: {row['caption'].split('&&')[0]}"], None)


@dataclass(frozen=True)
class Layout:
    """How a task's rows and predictions pair up: the benchmark schema, the row id column (``None``: the
    0-based row number), the id key of ``test_predict.json``, and the panel builder."""

    schema: str
    id_column: Optional[str]
    id_key: str
    show: Callable[[Dict[str, str], dict], Shown]


LAYOUTS: Dict[str, Layout] = {
    "refcoco": Layout("refcoco", "uniq_id", "uniq_id", _grounding),
    "vqa_gen": Layout("vqa", "question_id", "question_id", _vqa),
    "snli_ve": Layout("snli_ve", "uniq_id", "uniq_id", _entailment),
    "image_classify": Layout("image_classify", None, "uniq_id", _classify),
    "caption": Layout("caption", "uniq_id", "image_id", _caption),
}


def pick_rows(task: str, tsv: Path, predict_json: Path, n: int) -> List[Tuple[Dict[str, str], dict]]:
    """The first ``n`` rows of ``tsv`` (as ``column -> value``) that have a prediction, with it, one per image
    (an image's other questions or expressions are skipped, so that ``n`` images show)."""
    layout = LAYOUTS[task]
    columns = get_schema(layout.schema).columns
    preds = predictions(Path(predict_json), layout.id_key)
    out, shown = [], set()
    for k, fields in enumerate(tsv_rows(tsv)):
        row = dict(zip(columns, fields))
        key = str(k) if layout.id_column is None else row[layout.id_column]
        if key in preds and row["image"] not in shown:
            shown.add(row["image"])
            out.append((row, preds[key]))
            if len(out) == n:
                break
    return out


def draw_predictions(task: str, tsv: Path, predict_json: Path, out_png: Path, n: int = 6) -> Optional[Path]:
    """A PNG of ``n`` test images of ``task`` with the prediction drawn; ``None`` (nothing written) when the
    task has no layout here, nothing was predicted, or matplotlib is missing."""
    if task not in LAYOUTS:
        return None
    plt = pyplot()
    if plt is None:
        return None
    from matplotlib.patches import Rectangle

    from ofa.data_utils.images import decode_b64

    picked = pick_rows(task, tsv, predict_json, n)
    if not picked:
        return None
    shown_all = [LAYOUTS[task].show(row, pred) for row, pred in picked]
    texts = ["\n".join(textwrap.fill(line, 30) for line in shown.lines) for shown in shown_all]
    lines = max(t.count("\n") + 1 for t in texts)
    fig, axes = plt.subplots(1, len(picked), figsize=(2.6 * len(picked), 3.0 + 0.14 * lines), squeeze=False,
                             layout="constrained")
    for ax, (row, pred), shown, text in zip(axes[0], picked, shown_all, texts):
        ax.imshow(decode_b64(row["image"]).convert("RGB"), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for box, style in ((shown.truth_box, dict(edgecolor="white", linestyle="--")),
                           (shown.pred_box, dict(edgecolor="limegreen" if shown.correct else "red"))):
            if box is not None:
                ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, lw=2, **style))
        colour = "black" if shown.correct is None else ("green" if shown.correct else "red")
        ax.set_title(text, fontsize=7, color=colour, loc="left")
    fig.suptitle(f"{task}: first {len(picked)} test predictions", fontsize=9)
    with atomic_output(str(out_png)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png


def plot_learning_curves(curves: Dict[str, Any], path: Path) -> Optional[Path]:
    """``learning_curves.png``: per task, the train loss (left axis) and the validation metric (right axis)
    against the update; ``None`` (nothing written) without matplotlib or curves."""
    plt = pyplot()
    if plt is None:
        return None
    tasks = [t for t, c in curves.items() if c["train"] or c["valid"]]
    if not tasks:
        return None
    cols = min(3, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        c = curves[task]
        train = [(p["update"], p["loss"] if p["loss"] is not None else p.get("score")) for p in c["train"]]
        train = [(u, v) for u, v in train if v is not None]
        if train:
            ax.plot(*zip(*train), color="tab:blue", lw=1.2)
        ax.set_xlabel("update")
        ax.set_ylabel("train loss" if any(p["loss"] is not None for p in c["train"]) else "train score",
                      color="tab:blue")
        ax.set_title(task)
        valid = [(p["update"], p.get(c["metric"])) for p in c["valid"] if p.get(c["metric"]) is not None]
        if valid:
            twin = ax.twinx()
            twin.plot(*zip(*valid), color="tab:orange", marker="o", lw=1.2)
            twin.set_ylabel(f"valid {c['metric']}", color="tab:orange")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_output(str(path)) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
