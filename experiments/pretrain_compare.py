#!/usr/bin/env python
"""Does pretraining on the OFA mixture help? Pretrain once, finetune twice, compare on the benchmark.

    .venv/bin/python -m experiments.pretrain_compare                   # about 30 minutes of a 2-core CPU
    .venv/bin/python -m experiments.pretrain_compare --quick           # smoke run, a few minutes

Stages (each a subprocess of the installed tools, like the main job (``ofa_synth.main_job``), whose
benchmark, tokenizer, model and per-task recipe it reuses):

1. the embedded benchmark and its tokenizer (``main_job.prepare_data``; shared with the main job when
   ``--data`` points at the same folder);
2. ``ofa-synth pretrain``: pretraining sources from *new* scenes of the same generator (train-split
   scenes only, so nothing of the benchmark's valid / test / comp images or of the held-out pairs):
   image-text pairs (captioning + image-text matching), VQA, grounding + grounded captioning, detection,
   and text-only data for text infilling. Image infilling needs VQGAN codes (``--vqgan DIR``); without
   them that source is left out of the mixture (codes are never invented);
3. ``ofa-train --task unify`` for ``--pretrain-updates`` updates (the official mixture, a ``[v1, v2]`` batch
   pair per update), the ResNet at ``--backbone-lr-scale`` (0.1) times the learning rate: it starts from a
   random initialisation here, not from ImageNet as the official one, and at the full rate the mixture
   overwrites its shape features;
4. zero-shot: the pretrained checkpoint alone, evaluated as ``vqa_gen`` (trie over the answer set) and
   ``refcoco`` (bins-only constraint) on the TEST split, no finetuning (and as ``detection`` / ``region_caption``
   / ``image_text_match`` when those are among ``--tasks``: the mixture holds detection, grounded captioning
   and image-text matching);
5. per task, the SAME finetuning budget (the main job's recipe updates times ``--finetune-scale``), once
   from the pretrained checkpoint and once from scratch (``ofa-synth run --set TASK.init=...``; no
   curriculum chain, no SCST), both evaluated on TEST and COMP.

Writes ``OUT/comparison.json`` and prints the table: per task, scratch vs pretrained+finetuned (test and
comp), and the zero-shot rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ofa_synth import curves, recipe
from ofa_synth import main_job as mj  # the benchmark, stages and tools of the main job


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--out", default="runs/pretrain_compare", help="output folder")
    p.add_argument("--data", default=None, help="benchmark folder (default OUT/data; the main job's works)")
    p.add_argument("--num-images", type=int, default=recipe.DATA["num_images"], help="benchmark images")
    p.add_argument("--pretrain-images", type=int, default=3000,
                   help="scenes drawn for pretraining (about 70%% are train-split scenes and kept)")
    p.add_argument("--pretrain-updates", type=int, default=1200)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--backbone-lr-scale", type=float, default=0.1,
                   help="the ResNet's learning rate in pretraining, times --pretrain-lr (ofa-train "
                        "--image-backbone-lr-scale; default 0.1). At 1 the mixture trades the random ResNet's shape "
                        "features for colour ones and classification finetunes below scratch (experiments/README.md)")
    p.add_argument("--finetune-scale", type=float, default=0.5,
                   help="finetuning updates = the main job's recipe updates times this (same in both arms)")
    p.add_argument("--tasks", default=",".join(recipe.DEFAULT_TASKS))
    p.add_argument("--vqgan", default=None, help="VQGAN folder: adds image infilling to the mixture")
    p.add_argument("--verify-per-scene", type=int, default=0,
                   help="GQA-style yes / no verification questions per pretraining scene (ofa-synth pretrain "
                        "--verify-per-scene; default 0). 6 made them a third of the V-L rows (experiments/README.md)")
    p.add_argument("--no-vl-augment", action="store_true",
                   help="pretrain without the official V-L image augmentation (RandomResize up to 1.25x + CenterCrop, "
                        "RandAugment), as the finetuning tasks see the scenes; its colour and geometry operations can "
                        "change what the captions and answers say (measured: about neutral, see experiments/README.md)")
    p.add_argument("--pretrain-arg", action="append", default=[], metavar="ARG",
                   help="extra ofa-train option for the pretraining (repeat; e.g. --pretrain-arg=--sample-patch-num "
                        "--pretrain-arg=8)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data and a dozen updates")
    p.add_argument("--keep", action="store_true", help="reuse finished stages in OUT")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve() if args.data else out / "data"
    size = recipe.DATA["image_size"]
    num_images = 200 if args.quick else args.num_images
    pre_images = 60 if args.quick else args.pretrain_images
    pre_updates = 8 if args.quick else args.pretrain_updates
    stages = mj.Stages(out, verbose=False)
    tasks = [recipe.ALIASES.get(t.strip(), t.strip()) for t in args.tasks.split(",") if t.strip()]

    # 1. benchmark + tokenizer, 2. pretraining sources
    tok = mj.prepare_data(data, num_images, size, recipe.DATA["seed"], stages)
    pre = out / "pretrain_data"
    if not (args.keep and (pre / "pretrain_vl.tsv").exists()):
        cmd = [mj.tool("ofa-synth"), "pretrain", str(pre), "--num-images", str(pre_images), "--image-size",
               str(size), "--seed", str(recipe.DATA["seed"]), "--code-image-size", str(size // 2), "--quiet"]
        if args.vqgan:
            cmd += ["--vqgan", args.vqgan]
        if args.verify_per_scene:
            cmd += ["--verify-per-scene", str(args.verify_per_scene)]
        stages.run("synth_pretrain", cmd)

    # 3. pretraining
    ckpt = out / "pretrain" / "checkpoint_last.pt"
    if not (args.keep and ckpt.exists()):
        sources = ["--text-data", str(pre / "pretrain_text.tsv"), "--detection-data", str(pre / "pretrain_detection.tsv"),
                   "--neg-sample-dir", str(pre)]
        if (pre / "pretrain_image.tsv").exists():
            sources += ["--image-data", str(pre / "pretrain_image.tsv")]
        if args.no_vl_augment:
            sources += ["--vl-max-scale", "1", "--no-vl-rand-augment"]
        stages.run("pretrain", [
            mj.tool("ofa-train"), str(pre / "pretrain_vl.tsv"), "--task", "unify", "--bpe-dir", str(tok),
            *recipe.MODEL_ARGS, *recipe.COMMON, *sources,
            "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.0",
            "--code-dict-size", str(recipe.CODE_DICT_SIZE), "--num-bins", str(recipe.NUM_BINS),
            "--patch-image-size", str(size), "--max-image-size", str(size), "--code-image-size", str(size // 2),
            "--batch-size", "32", "--lr", str(args.pretrain_lr), "--warmup-updates", str(max(1, pre_updates // 20)),
            "--max-update", str(pre_updates), "--total-num-update", str(pre_updates), "--disable-validation",
            "--save-dir", str(ckpt.parent), "--log-file", str(out / "pretrain" / "train.log"),
            "--no-save-optimizer-state", "--image-backbone-lr-scale", str(args.backbone_lr_scale), *args.pretrain_arg])
    pre_curve = curves.curves_from_log(out / "pretrain" / "train.log", "loss")

    # 4. zero-shot from the pretrained checkpoint alone
    zero = {}
    zs = {"vqa_gen": ["--ans2label-file", str(data / "vqa_ans2label.json")],
          "refcoco": ["--eval-beam", "1"]}  # the task decodes under its bins-only constraint
    for task in ("detection", "region_caption", "image_text_match"):  # when compared: the mixture holds all three
        if task in tasks:
            zs[task] = [a.format(data=data) for a in recipe.RECIPE[task].get("args", [])]
    for task, extra in zs.items():
        rdir = out / "zero_shot" / task
        if args.keep and (rdir / "test_metrics.json").exists():
            zero[task] = json.loads((rdir / "test_metrics.json").read_text())
            continue
        cmd = [mj.tool("ofa-evaluate"), str(data / f"{recipe.FILES[task]}_test.tsv"), "--path", str(ckpt),
               "--task", task, "--bpe-dir", str(tok), "--results-path", str(rdir), "--batch-size", "64", "--cpu",
               "--code-dict-size", str(recipe.CODE_DICT_SIZE), "--num-bins", str(recipe.NUM_BINS),
               "--patch-image-size", str(size), "--max-image-size", str(size), *extra]
        stages.run(f"zero_shot_{task}", cmd)
        zero[task] = json.loads((rdir / "test_metrics.json").read_text())

    # 5. the two finetuning arms, same budget
    arms = {}
    for arm, init in (("scratch", None), ("pretrained", str(ckpt))):
        sets = []
        for task in tasks:
            r = recipe.RECIPE[task]
            n = 6 if args.quick else max(4, int(round(r["updates"] * args.finetune_scale)))
            sets += ["--set", f"{task}.updates={n}", "--set", f"{task}.valid_every={max(2, n // 2)}",
                     "--set", f"{task}.warmup={max(1, min(r['warmup'], n // 10))}",
                     "--set", f"{task}.init={json.dumps(init)}"]
        arm_out = out / f"finetune_{arm}"
        argv_arm = ["--data", str(data), "--out", str(arm_out), "--tasks", ",".join(tasks), "--no-scst", "--comp", *sets]
        if args.quick:
            argv_arm += ["--num-images", str(num_images)]
        if args.keep:
            argv_arm.append("--keep")
        print(f"\n=== finetuning from {arm}: main_job.py {' '.join(argv_arm)}", flush=True)
        if mj.main(argv_arm) != 0:
            raise SystemExit(f"finetuning arm {arm} failed")
        arms[arm] = json.loads((arm_out / "metrics.json").read_text())

    # report
    rows = []
    for task in tasks:
        metric, target = recipe.TARGETS[task]
        row = {"task": task, "metric": metric, "target": target,
               "updates": arms["scratch"]["recipe"][task]["updates"]}
        for arm in arms:
            row[f"{arm}_test"] = arms[arm]["test"][task].get(metric)
            row[f"{arm}_comp"] = arms[arm]["comp"][task].get(metric)
        row["pretraining_helps"] = (row["pretrained_test"] or 0) > (row["scratch_test"] or 0)
        rows.append(row)
    report = {"command": " ".join([sys.executable, *sys.argv]), "pretrain_updates": pre_updates,
              "backbone_lr_scale": args.backbone_lr_scale,
              "pretrain_args": args.pretrain_arg,
              "vl_augment": "none" if args.no_vl_augment else "official",
              "pretrain_images_drawn": pre_images, "finetune_scale": args.finetune_scale,
              "verify_per_scene": args.verify_per_scene,
              "vqgan": args.vqgan, "rows": rows, "zero_shot": zero, "pretrain_curve": pre_curve,
              "total_seconds": round(time.perf_counter() - t0, 1), "stage_seconds": stages.times}
    (out / "comparison.json").write_text(json.dumps(report, indent=1) + "\n")

    print(f"\npretraining: {pre_updates} updates of the unify mixture; finetuning budget: recipe x {args.finetune_scale}")
    print(f"{'task':16s} {'metric':10s} {'updates':>7s} {'scratch':>8s} {'pretrained':>10s}   "
          f"{'scratch':>8s} {'pretrained':>10s}")
    print(f"{'':16s} {'':10s} {'':>7s} {'(test)':>8s} {'(test)':>10s}   {'(comp)':>8s} {'(comp)':>10s}")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        print(f"{r['task']:16s} {r['metric']:10s} {r['updates']:>7d} {fmt(r['scratch_test']):>8s} "
              f"{fmt(r['pretrained_test']):>10s}   {fmt(r['scratch_comp']):>8s} {fmt(r['pretrained_comp']):>10s}")
    print("\nzero-shot (pretrained checkpoint alone, test split):")
    for task in zero:
        metric = recipe.TARGETS[task][0]
        print(f"  {task:16s} {metric:10s} {fmt(zero[task].get(metric))}")
    print(f"\nwrote {out / 'comparison.json'} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
