#!/usr/bin/env python
"""Why grounding misses its target in the main job: a control run without the text-conditioned choice.

Trains the main job's grounding recipe (same model, updates, batch and lr, from scratch) twice on the same
benchmark images and evaluates both on the test split:

1. ``referring``: the benchmark's referring expressions, which pick one of 2-4 objects by its attributes
   and position ("the small red circle on the left"): the model must read the text to know which box;
2. ``biggest``: one fixed expression per image, "the biggest object", whose box is the scene's main
   (largest, labelled) object: the model must find and box an object, but not choose by the text.

If (2) reaches the target and (1) does not, the missing piece is the text-conditioned selection, not
localisation or the box read-out. Also reported: the mean absolute coordinate error in pixels against
always answering the mean training box, and (1)'s accuracy per expression form.

    .venv/bin/python scripts/grounding_control.py --data runs/main_job/data --out runs/grounding_control

Writes ``{out}/grounding_control.json`` (and ``--json`` a copy, e.g. bench/results/grounding_control.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data_utils.synth.breakdown import breakdown  # noqa: E402

CONTROL_TEXT = "the biggest object"
SPLITS = ("train", "valid", "test")


def write_biggest_object_split(data: Path, out: Path) -> Dict[str, int]:
    """``out/refcoco_{split}.tsv``: one row per image of ``data``'s grounding files, text ``CONTROL_TEXT``
    and the box of the scene's main object (``scenes_{split}.jsonl``); the tokenizer and manifest are
    copied so that ``main_job.py --data out`` uses them as they are. Returns rows per split."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        scenes = {}
        for line in open(data / f"scenes_{split}.jsonl", encoding="utf-8"):
            s = json.loads(line)
            scenes[str(s["image_id"])] = s
        seen, rows = set(), []
        for line in open(data / f"refcoco_{split}.tsv", encoding="utf-8"):
            uniq_id, image_id, _text, _box, image = line.rstrip("\n").split("\t")
            if image_id in seen:
                continue
            seen.add(image_id)
            scene = scenes[image_id]
            box = scene["objects"][scene["main"]]["box"]
            rows.append("\t".join([image_id, image_id, CONTROL_TEXT, ",".join(map(str, box)), image]))
        (out / f"refcoco_{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        shutil.copy(data / f"scenes_{split}.jsonl", out / f"scenes_{split}.jsonl")
        counts[split] = len(rows)
    shutil.copy(data / "manifest.json", out / "manifest.json")
    shutil.rmtree(out / "tok", ignore_errors=True)
    shutil.copytree(data / "tok", out / "tok")
    return counts


def coordinate_errors(predict_json: Path, tsv: Path, train_tsv: Path) -> Dict[str, List[float]]:
    """Mean absolute error (pixels) of x0, y0, x1, y1: the predictions', and always answering the mean
    training box's."""
    def boxes(path):
        return {f[0]: [float(v) for v in f[3].split(",")]
                for f in (line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8") if line.strip())}
    ref, train = boxes(tsv), list(boxes(train_tsv).values())
    mean_box = [sum(b[i] for b in train) / len(train) for i in range(4)]
    pred = {str(p["uniq_id"]): p["box"] for p in json.loads(Path(predict_json).read_text())}
    keys = [k for k in ref if k in pred]
    mae = [sum(abs(pred[k][i] - ref[k][i]) for k in keys) / len(keys) for i in range(4)]
    base = [sum(abs(mean_box[i] - ref[k][i]) for k in keys) / len(keys) for i in range(4)]
    return {"model": [round(v, 2) for v in mae], "mean_box": [round(v, 2) for v in base]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the main job's benchmark folder (made if missing)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--set", action="append", default=[], help="recipe override passed to main_job.py")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    main_job = [sys.executable, str(ROOT / "scripts" / "main_job.py"), "--tasks", "refcoco",
                "--set", "refcoco.init=null", *[a for s in args.set for a in ("--set", s)]]
    result = {"command": " ".join([sys.executable, *sys.argv]), "runs": {}}
    for name in ("referring", "biggest"):
        data = args.data if name == "referring" else args.out / "biggest_data"
        if name == "biggest":
            result["biggest_rows"] = write_biggest_object_split(args.data, data)
        run = args.out / name
        subprocess.run([*main_job, "--data", str(data), "--out", str(run)], check=True)
        metrics = json.loads((run / "metrics.json").read_text())
        predict = run / "refcoco" / "test" / "test_predict.json"
        result["runs"][name] = {
            "test_acc": metrics["test"]["refcoco"]["acc"],
            "valid_curve": json.loads((run / "learning_curves.json").read_text())["refcoco"]["valid"],
            "coordinate_mae_px": coordinate_errors(predict, data / "refcoco_test.tsv", data / "refcoco_train.tsv"),
            "by_form": breakdown("refcoco", predict, data, "test") if name == "referring" else None,
            "train_seconds": metrics["stage_seconds"].get("train_refcoco"),
        }
    result["recipe"] = metrics["recipe"]["refcoco"]
    text = json.dumps(result, indent=1) + "\n"
    (args.out / "grounding_control.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    print(f"\n{'run':10s} {'test acc@0.5':>12s}  coordinate MAE px (model / mean box)")
    for name, r in result["runs"].items():
        m = r["coordinate_mae_px"]
        print(f"{name:10s} {r['test_acc']:12.4f}  {m['model']} / {m['mean_box']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
