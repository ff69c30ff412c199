#!/usr/bin/env python
"""Why grounding misses its target in the main job: control runs that take parts of the task away.

Trains the main job's grounding recipe (same model, updates, batch and lr, from scratch) once per
control on the same benchmark images and evaluates each on the test split:

- ``referring``: the benchmark's referring expressions, which pick one of 2-4 objects by size, colour,
  shape and position ("the small red circle on the left"): read the text, choose, box;
- ``biggest``: one fixed text per image, "the biggest object", the scene's main (largest, labelled)
  object: box the salient object, no text-conditioned choice;
- ``smallest``: one fixed text per image, "the smallest object", on the images whose smallest object is
  clearly the smallest (the next one has at least ``CLEAR_MARGIN`` x its visible area): box an object
  that is not the salient one, still no text-conditioned choice;
- ``colour``: "the red object" for every object whose colour no other object of its scene has: a
  text-conditioned choice by the one attribute a pixel shows directly.

Each run reports test accuracy (the official Acc@0.5), the mean absolute coordinate error in pixels
against always answering the mean training box, and the anatomy of its answers per target size
(``breakdown.grounding_anatomy``: the right object, another object of the scene, or no object at all), plus the
referring run's accuracy per expression form.

    .venv/bin/python -m experiments.grounding_control --data runs/main_job/data --out runs/grounding_control

Writes ``{out}/grounding_control.json`` (and ``--json`` a copy, e.g. experiments/results/grounding_control.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from ofa_synth.breakdown import breakdown, grounding_anatomy, load_scenes, predictions, same_box_share, tsv_rows

SPLITS = ("train", "valid", "test")
CLEAR_MARGIN = 1.15  # as the generator's main object: the next-smallest has >= 1.15 x the visible area

# control name -> scene (a ``scenes_{split}.jsonl`` record) -> [(text, index of the object it refers to)]
Rows = List[Tuple[str, int]]
CONTROLS: Dict[str, Callable[[dict], Rows]] = {}


def control(name: str):
    """Register a control: a function from a scene to its ``(text, object index)`` rows."""
    def register(fn: Callable[[dict], Rows]) -> Callable[[dict], Rows]:
        CONTROLS[name] = fn
        return fn
    return register


@control("biggest")
def biggest_object(scene: dict) -> Rows:
    return [("the biggest object", scene["main"])]


@control("smallest")
def smallest_object(scene: dict) -> Rows:
    areas = sorted((o["area"], k) for k, o in enumerate(scene["objects"]))
    if areas[1][0] < CLEAR_MARGIN * areas[0][0]:
        return []  # no clearly smallest object: the text would not say which box
    return [("the smallest object", areas[0][1])]


@control("colour")
def unique_colour(scene: dict) -> Rows:
    objs = scene["objects"]
    return [(f"the {o['color']} object", k) for k, o in enumerate(objs)
            if sum(p["color"] == o["color"] for p in objs) == 1]


def write_control_split(data: Path, out: Path, name: str) -> Dict[str, int]:
    """``out/refcoco_{split}.tsv`` for control ``name``: the rows ``CONTROLS[name]`` gives each image of
    ``data``'s grounding files (ids ``{image_id}_{object index}``, the object's box as the scene records
    it); scenes, tokenizer and manifest are copied so that ``ofa-synth run --data out`` uses them as they
    are. Returns rows per split."""
    rows_of = CONTROLS[name]
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        scenes, seen, rows = load_scenes(data / f"scenes_{split}.jsonl"), set(), []
        for _row_id, image_id, _text, _box, image in tsv_rows(data / f"refcoco_{split}.tsv"):
            if image_id in seen:
                continue
            seen.add(image_id)
            scene = scenes[image_id]
            for text, k in rows_of(scene):
                box = ",".join(map(str, scene["objects"][k]["box"]))
                rows.append("\t".join([f"{image_id}_{k}", image_id, text, box, image]))
        (out / f"refcoco_{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        shutil.copy(data / f"scenes_{split}.jsonl", out / f"scenes_{split}.jsonl")
        counts[split] = len(rows)
    shutil.copy(data / "manifest.json", out / "manifest.json")
    shutil.rmtree(out / "tok", ignore_errors=True)
    shutil.copytree(data / "tok", out / "tok")
    return counts


def _boxes(path: Path) -> Dict[str, Tuple[str, List[float]]]:
    """``row id -> (image id, box)`` of a grounding TSV."""
    return {f[0]: (f[1], [float(v) for v in f[3].split(",")]) for f in tsv_rows(path)}


def coordinate_errors(predict_json: Path, tsv: Path, train_tsv: Path) -> Dict[str, List[float]]:
    """Mean absolute error (pixels) of x0, y0, x1, y1: the predictions', and always answering the mean
    training box's."""
    ref, train = _boxes(tsv), [b for _, b in _boxes(train_tsv).values()]
    mean_box = [sum(b[i] for b in train) / len(train) for i in range(4)]
    pred = {k: r["box"] for k, r in predictions(predict_json, "uniq_id").items()}
    keys = [k for k in ref if k in pred]
    mae = [sum(abs(pred[k][i] - ref[k][1][i]) for k in keys) / len(keys) for i in range(4)]
    base = [sum(abs(mean_box[i] - ref[k][1][i]) for k in keys) / len(keys) for i in range(4)]
    return {"model": [round(v, 2) for v in mae], "mean_box": [round(v, 2) for v in base]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the main job's benchmark folder (made if missing)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--controls", default=",".join(["referring", *CONTROLS]),
                   help=f"comma list of runs (default all: referring,{','.join(CONTROLS)})")
    p.add_argument("--set", action="append", default=[], help="recipe override passed to ofa-synth run")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.controls.split(",") if n.strip()]
    unknown = [n for n in names if n != "referring" and n not in CONTROLS]
    if unknown:
        raise SystemExit(f"unknown control(s) {unknown}; choose from referring, {', '.join(CONTROLS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    main_job = [str(Path(sys.executable).parent / "ofa-synth"), "run", "--tasks", "refcoco",
                "--set", "refcoco.init=null", *[a for s in args.set for a in ("--set", s)]]
    if "referring" in names:  # the benchmark first (main_job makes it when missing): the controls read it
        names = ["referring"] + [n for n in names if n != "referring"]
    result = {"command": " ".join([sys.executable, *sys.argv]), "runs": {}}
    for name in names:
        data = args.data if name == "referring" else args.out / f"{name}_data"
        rows = None if name == "referring" else write_control_split(args.data, data, name)
        run = args.out / name
        subprocess.run([*main_job, "--data", str(data), "--out", str(run)], check=True)
        metrics = json.loads((run / "metrics.json").read_text())
        predict = run / "refcoco" / "test" / "test_predict.json"
        result["runs"][name] = {
            "rows": rows,
            "test_acc": metrics["test"]["refcoco"]["acc"],
            "valid_curve": json.loads((run / "learning_curves.json").read_text())["refcoco"]["valid"],
            "coordinate_mae_px": coordinate_errors(predict, data / "refcoco_test.tsv", data / "refcoco_train.tsv"),
            "anatomy": grounding_anatomy(predict, data / "refcoco_test.tsv", data / "scenes_test.jsonl"),
            "same_box": same_box_share(predict, data / "refcoco_test.tsv"),
            "by_form": breakdown("refcoco", predict, data, "test") if name == "referring" else None,
            "train_seconds": metrics["stage_seconds"].get("train_refcoco"),
        }
        result["recipe"] = metrics["recipe"]["refcoco"]
    text = json.dumps(result, indent=1) + "\n"
    (args.out / "grounding_control.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    print(f"\n{'run':10s} {'test acc':>8s}  {'small':>5s} {'large':>5s}  {'other':>5s} {'none':>5s}  "
          f"{'same box':>8s}  coordinate MAE px (model / mean box)")
    for name, r in result["runs"].items():
        a, m = r["anatomy"], r["coordinate_mae_px"]
        size = {g: f"{a[g]['hit']:.3f}" if g in a else "-" for g in ("small", "large")}
        print(f"{name:10s} {r['test_acc']:8.4f}  {size['small']:>5s} {size['large']:>5s}  {a['all']['other']:5.3f} "
              f"{a['all']['none']:5.3f}  {r['same_box']['same_box']:8.3f}  {m['model']} / {m['mean_box']}")
    print("(small / large: accuracy by the referred object's size; other: boxed another object of the scene; "
          "none: boxed no object; same box: share of the images with expressions for different objects where every "
          "expression got the same box)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
