"""Learning curves of the main job's training runs: read from fairseq's JSON ``--log-file``, written as
``learning_curves.json`` / ``.csv`` / ``.txt`` (drawn by ``figures.plot_learning_curves``).

A task's curve is ``{"metric", "train": [{update, loss, nll_loss, score, lr, wall}], "valid": [{update,
loss, <metric>}]}``: the train points are fairseq's ``train_inner`` records (every ``--log-interval``
updates), the valid points every validation's record.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ofa.io_utils import AtomicFile, write_atomic


def json_records(log_file: Path) -> List[Tuple[str, Dict[str, Any]]]:
    """``(kind, record)`` for every JSON metrics line of a fairseq ``--log-file``.

    fairseq writes the bare JSON of each progress-bar record to the file (no logger name), so records are
    told apart by their keys (``valid_*``: validation; ``train_loss``: end-of-epoch summary; else
    ``train_inner``). Repeated records are dropped: plain ``fairseq-train`` (and ``ofa-train`` before it
    attached the file handler once) wrote each record once per progress bar opened so far.
    """
    out, seen = [], set()
    if not log_file.exists():
        return out
    for line in open(log_file, encoding="utf-8"):
        m = re.search(r"(\{.*\})\s*$", line)
        if not m:
            continue
        try:
            rec = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        if any(k.startswith("valid_") for k in rec):
            kind = "valid"
        elif "train_loss" in rec or "train_num_updates" in rec:
            kind = "train"
        else:
            kind = "train_inner"
        key = (kind, json.dumps(rec, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        out.append((kind, rec))
    return out


def _num(v) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def curves_from_log(log_file: Path, metric: str) -> Dict[str, Any]:
    """One task's curve (module docstring) from its ``--log-file``; ``metric`` names the validation metric."""
    train, valid = [], []
    for kind, rec in json_records(log_file):
        if kind == "train_inner":
            train.append({"update": int(_num(rec.get("num_updates")) or 0), "loss": _num(rec.get("loss")),
                          "nll_loss": _num(rec.get("nll_loss")), "score": _num(rec.get("score")),
                          "lr": _num(rec.get("lr")), "wall": _num(rec.get("wall"))})
        elif kind == "valid":
            valid.append({"update": int(_num(rec.get("valid_num_updates")) or 0),
                          "loss": _num(rec.get("valid_loss")), metric: _num(rec.get(f"valid_{metric}"))})
    return {"metric": metric, "train": train, "valid": valid}


def write_curve_summaries(out: Path, curves: Dict[str, Any]) -> None:
    """``learning_curves.csv`` (every point) and ``learning_curves.txt`` (six train points and every
    validation per task) in ``out``."""
    with AtomicFile(str(out / "learning_curves.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "kind", "update", "value"])
        for task, c in curves.items():
            for p in c["train"]:
                value = p["loss"] if p["loss"] is not None else p.get("score")
                w.writerow([task, "train_loss" if p["loss"] is not None else "train_score", p["update"], value])
            for p in c["valid"]:
                w.writerow([task, f"valid_{c['metric']}", p["update"], p.get(c["metric"])])
    lines = []
    for task, c in curves.items():
        train = c["train"]
        pick = train if len(train) <= 6 else [train[int(round(i * (len(train) - 1) / 5))] for i in range(6)]
        tl = ", ".join(f"{p['update']}:{p['loss']:.2f}" for p in pick if p["loss"] is not None)
        vl = ", ".join(f"{p['update']}:{p.get(c['metric'])}" for p in c["valid"])
        lines.append(f"  {task:16s} train loss  {tl}")
        lines.append(f"  {'':16s} valid {c['metric']:9s} {vl}")
    write_atomic(str(out / "learning_curves.txt"), "\n".join(lines) + "\n")
