"""The main job: generate the embedded benchmark, train a small OFA on every task, evaluate on the
held-out TEST split (and the compositional COMP split) and print a metrics table.

    bash scripts/setup.sh && .venv/bin/ofa-synth run           # the tuned recipe, about 15 minutes
    .venv/bin/ofa-synth run --quick                             # 1-2 minute smoke run
    .venv/bin/ofa-synth run --tasks caption,refcoco --out runs/two_tasks
    .venv/bin/ofa-synth run --tasks detection,region_caption,image_text_match   # not in the default run

Stages (each one a subprocess of the installed command-line tools next to ``sys.executable``):

1. ``ofa-synth generate``   the benchmark (skipped when ``DATA/manifest.json`` matches the settings)
2. ``ofa-tokenizer train``  a SentencePiece BPE tokenizer on the training text (skipped when present)
3. ``ofa-train``            one small model per task (``--log-format json --log-file``); a task starts
                            from another task's final weights (``init`` in the recipe). The chain
                            opens with classification from scratch, an ImageNet-style visual start
                            (colour and shape of the dominant object), then VQA -> entailment ->
                            caption, each reusing what the earlier ones learned about colours, shapes
                            and positions; grounding trains from scratch (from the VQA weights it
                            learned less: experiments/README.md). ``--set TASK.init=null`` trains a task
                            from scratch, ``--set TASK.init='"path.pt"'`` from a checkpoint
4. ``ofa-train`` again      caption stage 2: SCST (CIDEr-D reward against all references of an image)
                            from the stage-1 checkpoint
5. ``ofa-evaluate``         every model on the TEST split, where the targets apply, and with ``--comp``
                            on the compositional COMP split (and the stage-1 caption model, for the
                            SCST before / after comparison)

Outputs under ``--out``: ``metrics.json`` (test metrics, targets, per-stage wall time; for VQA, entailment
and grounding also the score per question kind, hypothesis kind and expression form, ``by_kind``; for VQA's
yes / no kinds and entailment the true -> predicted answer counts, ``answers``; for grounding what its boxes
hit, ``anatomy``, and how often an image's expressions all got one box, ``same_box``),
``learning_curves.json`` (per task: update -> train loss, and the validation metric of every
validation), ``learning_curves.csv`` / ``learning_curves.txt`` (a compact summary), the figures
``learning_curves.png`` and ``predictions_{task}.png`` (a few test images with the predictions drawn;
both need matplotlib, the ``synth`` extra), and per task its checkpoint folder, training log and
evaluation results.

The recipe (``ofa_synth.recipe``) is sized for about 15 minutes of a quiet 2-core CPU. ``--minutes M``
scales every task's number of updates by ``(M - fixed overhead) / (15 - fixed overhead)``;
``--set TASK.KEY=VALUE`` overrides one recipe entry (e.g. ``--set refcoco.updates=400``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from ofa.io_utils import AtomicFile, write_atomic
from ofa_synth.breakdown import TSV_NAME, answer_table, breakdown, grounding_anatomy, same_box_share
from ofa_synth.curves import curves_from_log, write_curve_summaries
from ofa_synth.figures import draw_predictions, plot_learning_curves
from ofa_synth.recipe import (
    ALIASES,
    CODE_DICT_SIZE,
    COMMON,
    DATA,
    DEFAULT_TASKS,
    EVAL_SPLITS,
    FILES,
    MODEL_ARGS,
    NUM_BINS,
    QUICK,
    RECIPE,
    SCST,
    TARGETS,
    TOKENIZER,
    apply_overrides,
    bin_range,
    quick,
    scale_budget,
)
from ofa_synth.version import GENERATOR_VERSION

BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------ helpers
def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise SystemExit(f"{path} not found: run `bash scripts/setup.sh` first (the tools live next to "
                         f"{sys.executable})")
    return str(path)


class Stages:
    """Runs stage subprocesses, logs their output, and records their wall time."""

    def __init__(self, out: Path, verbose: bool):
        self.out, self.verbose, self.times = out, verbose, {}
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def run(self, name: str, cmd: List[str]) -> float:
        log = self.out / "logs" / f"{name}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(map(_quote, cmd))}", flush=True)
        env = dict(os.environ)
        env.setdefault("PYTHONWARNINGS", "ignore")
        t0 = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    cwd=str(self.out))
            for line in proc.stdout:
                f.write(line)
                if self.verbose or _interesting(line):
                    print("    " + line.rstrip()[:240], flush=True)
            rc = proc.wait()
        seconds = time.perf_counter() - t0
        self.times[name] = round(self.times.get(name, 0.0) + seconds, 1)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: done in {seconds:.1f} s", flush=True)
        if rc != 0:
            tail = "".join(open(log).readlines()[-30:])
            raise SystemExit(f"stage {name} failed (exit {rc}); log {log}:\n{tail}")
        return seconds


def _quote(s: str) -> str:
    return s if re.fullmatch(r"[\w@%+=:,./-]+", s) else "'" + s.replace("'", "'\\''") + "'"


def _interesting(line: str) -> bool:
    return ("valid |" in line or "INFO:valid:" in line or "done training" in line or line.startswith("{")
            or "Error" in line or "error:" in line)




def write_subset(src: Path, dst: Path, rows: int) -> None:
    """The first ``rows`` lines of a TSV (a small validation split: validation generates, so it costs)."""
    with open(src, encoding="utf-8") as f, AtomicFile(str(dst), "w", encoding="utf-8") as g:
        for k, line in enumerate(f):
            if k >= rows:
                break
            g.write(line)


def write_caption_refs(src: Path, dst: Path) -> int:
    """The caption stage-2 (SCST) training file: one row per image with all its training captions joined
    by ``&&`` (the official ``caption_stage2_train.tsv``, keyed by image id), from the stage-1 file's one
    caption per row (columns uniq id, image id, caption, object labels, image). SCST's CIDEr-D reward is
    then taken against every reference of the image, not one. Returns the number of images."""
    rows: Dict[str, List[str]] = {}
    with open(src, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if cols[1] in rows:
                rows[cols[1]][2] += "&&" + cols[2]
            else:
                rows[cols[1]] = [cols[1], cols[1], cols[2], *cols[3:]]
    with AtomicFile(str(dst), "w", encoding="utf-8") as g:
        for cols in rows.values():
            g.write("\t".join(cols) + "\n")
    return len(rows)




def prepare_data(data: Path, num_images: int, image_size: int, seed: int, stages: "Stages") -> Path:
    """1. the benchmark (skipped when ``data/manifest.json`` matches), 2. its tokenizer; returns the
    tokenizer folder."""
    manifest = data / "manifest.json"
    want = dict(num_images=num_images, seed=seed, image_size=[image_size, image_size],
                generator_version=GENERATOR_VERSION)
    have = json.loads(manifest.read_text()) if manifest.exists() else {}
    if all(have.get(k) == v for k, v in want.items()) and "comp" in have.get("images_per_split", {}):
        print(f"benchmark: {data} matches ({num_images} images, {image_size} px, seed {seed}, generator version "
              f"{want['generator_version']}); skipped")
    else:
        stages.run("synth", [tool("ofa-synth"), "generate", str(data), "--num-images", str(num_images), "--image-size",
                             str(image_size), "--seed", str(seed), "--workers", str(min(2, os.cpu_count() or 1))])
        shutil.rmtree(data / "tok", ignore_errors=True)
    tok = data / "tok"
    if (tok / "spm.model").exists() and (tok / "dict.txt").exists():
        print(f"tokenizer: {tok} exists; skipped")
    else:
        stages.run("tokenizer", [tool("ofa-tokenizer"), "train", "--corpus", str(data / "text_corpus.txt"), "--out",
                                 str(tok), "--vocab-size", str(TOKENIZER["vocab_size"]), "--model-type",
                                 TOKENIZER["model_type"]])
    return tok




# --------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="ofa-synth run", description=__doc__.split("\n\n")[0].replace("\n", " "),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/main_job", help="output folder (default runs/main_job)")
    p.add_argument("--data", default=None, help="benchmark folder (default OUT/data)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"comma list of tasks (default {','.join(DEFAULT_TASKS)}; also {','.join(t for t in RECIPE if t not in DEFAULT_TASKS)})")
    p.add_argument("--minutes", type=float, default=15.0,
                   help="time budget the recipe is scaled to (default 15: the tuned recipe as is)")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 images, a dozen updates per task")
    p.add_argument("--no-scst", action="store_true", help="skip caption stage 2 (SCST)")
    p.add_argument("--num-images", type=int, default=None, help=f"benchmark size (default {DATA['num_images']})")
    p.add_argument("--image-size", type=int, default=DATA["image_size"], help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=DATA["seed"], help="benchmark seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help="override a recipe entry, e.g. refcoco.updates=400, caption.lr=5e-4, scst.updates=0")
    p.add_argument("--model-args", default=None, help="replace the model options (one quoted string)")
    p.add_argument("--curve-split", default="valid", choices=["valid", "comp"],
                   help="split of the validations during training (learning curves only; checkpoint_last is "
                        "what gets evaluated). 'comp' is for analysis: it shows the compositional gap")
    p.add_argument("--comp", action="store_true",
                   help="also evaluate every model on the compositional COMP split (about 1.5 min more)")
    p.add_argument("--keep-order", action="store_true", help="run the tasks in the order --tasks gives")
    p.add_argument("--keep", action="store_true", help="reuse finished task checkpoints in OUT (resume a run)")
    p.add_argument("--verbose", action="store_true", help="echo every line the tools print")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve() if args.data else out / "data"
    tasks = [ALIASES.get(t.strip(), t.strip()) for t in args.tasks.split(",") if t.strip()]
    if not args.keep_order:  # the recipe's order: tasks that initialise others run first
        tasks = [t for t in RECIPE if t in tasks] + [t for t in tasks if t not in RECIPE]
    for t in tasks:
        if t not in RECIPE:
            raise SystemExit(f"unknown task {t!r}; choose from {', '.join(RECIPE)}")
    recipe = {t: dict(RECIPE[t]) for t in tasks}
    scst = dict(SCST)
    num_images = args.num_images or (QUICK["num_images"] if args.quick else DATA["num_images"])
    if args.quick:
        quick(recipe, scst)
    elif args.minutes != 15.0:
        scale = scale_budget(recipe, scst, args.minutes)
        print(f"--minutes {args.minutes}: updates scaled by {scale:.2f}")
    apply_overrides(recipe, scst, args.set)
    model_args = args.model_args.split() if args.model_args else MODEL_ARGS
    stages = Stages(out, args.verbose)

    tok = prepare_data(data, num_images, args.image_size, args.seed, stages)
    bins = bin_range(tok)

    # 3. training, 4. SCST
    results: Dict[str, Dict[str, Any]] = {}
    curves: Dict[str, Any] = {}
    for task in tasks:
        r = recipe[task]
        name = FILES[task]
        metric = TARGETS[task][0]
        tdir = out / task
        ckpt = tdir / "ckpt" / "checkpoint_last.pt"
        log_file = tdir / "train.log"
        if not (args.keep and ckpt.exists()):
            shutil.rmtree(tdir, ignore_errors=True)
            tdir.mkdir(parents=True)
            valid = tdir / f"{name}_{args.curve_split}_small.tsv"
            write_subset(data / f"{name}_{args.curve_split}.tsv", valid, int(r["valid_rows"]))
            extra = [a.format(data=data) for a in r.get("args", [])]
            crit = ["--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing",
                    str(r.get("label_smoothing", 0.1))]
            if r.get("bins_constraint"):
                crit += ["--constraint-range", f"{bins[0]},{bins[1]}"]
            cmd = [tool("ofa-train"), f"{data}/{name}_train.tsv,{valid}", "--task", task, "--bpe-dir", str(tok),
                   *model_args, *COMMON, *crit,
                   "--code-dict-size", str(CODE_DICT_SIZE), "--num-bins", str(NUM_BINS),
                   "--patch-image-size", str(args.image_size), "--max-image-size", str(args.image_size),
                   "--batch-size", str(r["batch"]), "--batch-size-valid", str(r.get("batch_valid", 64)),
                   "--lr", str(r["lr"]), "--warmup-updates", str(r["warmup"]),
                   "--max-update", str(r["updates"]), "--total-num-update", str(r["updates"]),
                   "--validate-interval-updates", str(r["valid_every"]),
                   "--save-dir", str(tdir / "ckpt"), "--log-file", str(log_file),
                   "--best-checkpoint-metric", metric, "--maximize-best-checkpoint-metric",
                   "--no-save-optimizer-state", *extra]
            init = r.get("init")
            if init and init in results:
                cmd += ["--finetune-from-model", results[init]["checkpoint"]]
            elif init and os.path.isfile(str(init)):  # a checkpoint file (experiments)
                cmd += ["--finetune-from-model", str(init)]
            elif init:
                print(f"  ({task}: init task {init!r} not run before it; training from scratch)")
            stages.run(f"train_{task}", cmd)
        curves[task] = curves_from_log(log_file, metric)
        results[task] = {"checkpoint": str(ckpt), "updates": r["updates"]}

    if "caption" in tasks and not args.no_scst and scst["updates"] > 0:
        r, tdir = scst, out / "caption_scst"
        ckpt = tdir / "ckpt" / "checkpoint_last.pt"
        log_file = tdir / "train.log"
        if not (args.keep and ckpt.exists()):
            shutil.rmtree(tdir, ignore_errors=True)
            tdir.mkdir(parents=True)
            valid = out / "caption" / f"caption_{args.curve_split}_small.tsv"
            train = tdir / "caption_train_refs.tsv"
            write_caption_refs(data / "caption_train.tsv", train)
            df_args = []
            if r.get("cider_df"):  # the reward's document frequencies over the whole training split
                stages.run("cider_df", [tool("ofa-data"), "cider-df", str(train), "--out", str(tdir / "train-words.p")])
                df_args = ["--scst-cider-cached-tokens", str(tdir / "train-words.p")]
            cmd = [tool("ofa-train"), f"{train},{valid}", "--task", "caption", "--bpe-dir", str(tok),
                   *model_args, *COMMON, "--criterion", "scst_reward_criterion",
                   "--restore-file", results["caption"]["checkpoint"], "--reset-optimizer", "--reset-dataloader",
                   "--reset-meters", "--reset-lr-scheduler",
                   "--code-dict-size", str(CODE_DICT_SIZE), "--num-bins", str(NUM_BINS),
                   "--patch-image-size", str(args.image_size), "--max-image-size", str(args.image_size),
                   "--batch-size", str(r["batch"]), "--batch-size-valid", "64", "--lr", str(r["lr"]),
                   "--warmup-updates", str(r.get("warmup", 0)), "--end-learning-rate", str(r["end_lr"]),
                   "--max-update", str(r["updates"]), "--total-num-update", str(r["updates"]),
                   "--validate-interval-updates", str(r["valid_every"]),
                   "--save-dir", str(tdir / "ckpt"), "--log-file", str(log_file),
                   "--best-checkpoint-metric", "cider", "--maximize-best-checkpoint-metric",
                   "--no-save-optimizer-state", *df_args,
                   *[a.format(data=data) for a in RECIPE["caption"]["args"]], *r.get("args", [])]
            stages.run("train_caption_scst", cmd)
        curves["caption_scst"] = curves_from_log(log_file, "cider")
        results["caption_scst"] = {"checkpoint": str(ckpt), "updates": r["updates"]}

    # 5. evaluation on TEST (the targets) and on the compositional split COMP (reported, no target)
    for key, res in results.items():
        task = "caption" if key == "caption_scst" else key
        for split in EVAL_SPLITS if args.comp else EVAL_SPLITS[:1]:
            rdir = out / key / split
            cmd = [tool("ofa-evaluate"), f"{data}/{FILES[task]}_{split}.tsv", "--path", res["checkpoint"],
                   "--results-path", str(rdir), "--batch-size", "64", "--cpu"]
            stages.run(f"eval_{key}_{split}", cmd)
            res[split] = json.loads((rdir / "test_metrics.json").read_text())
            if task in TSV_NAME and (data / f"scenes_{split}.jsonl").exists():
                res[split]["by_kind"] = breakdown(task, rdir / "test_predict.json", data, split)
                if task in ("vqa_gen", "snli_ve"):
                    res[split]["answers"] = answer_table(task, rdir / "test_predict.json", data, split)
                if task == "refcoco":
                    res[split]["anatomy"] = grounding_anatomy(rdir / "test_predict.json",
                                                              data / f"{FILES[task]}_{split}.tsv",
                                                              data / f"scenes_{split}.jsonl")
                    res[split]["same_box"] = same_box_share(rdir / "test_predict.json", data / f"{FILES[task]}_{split}.tsv")

    # figures: learning curves and a few test predictions per task (need matplotlib)
    figures = [plot_learning_curves(curves, out / "learning_curves.png")]
    for key, res in results.items():
        task = "caption" if key == "caption_scst" else key
        figures.append(draw_predictions(task, data / f"{FILES[task]}_test.tsv", out / key / "test" / "test_predict.json",
                                        out / f"predictions_{key}.png"))
    figures = [str(f) for f in figures if f is not None]

    # report
    total = time.perf_counter() - t_start
    rows = []
    for key, res in results.items():
        task = "caption" if key == "caption_scst" else key
        metric, target = TARGETS[task]
        value = res["test"].get(metric)
        comp = res.get("comp", {}).get(metric)
        label = "caption (stage 1, CE)" if key == "caption" and "caption_scst" in results else \
            "caption (stage 2, SCST)" if key == "caption_scst" else key
        rows.append(dict(task=label, metric=metric, value=value, target=target,
                         met=None if value is None or target is None else value >= target, comp=comp))
    report = {"command": " ".join(map(_quote, [sys.executable, *sys.argv])), "data": str(data),
              "num_images": num_images, "image_size": args.image_size, "model_args": model_args,
              "recipe": recipe, "scst": scst if "caption_scst" in results else None,
              "rows": rows, "test": {k: v["test"] for k, v in results.items()},
              "comp": {k: v["comp"] for k, v in results.items() if "comp" in v},
              "stage_seconds": stages.times, "total_seconds": round(total, 1)}
    write_atomic(str(out / "metrics.json"), json.dumps(report, indent=1) + "\n")
    write_atomic(str(out / "learning_curves.json"), json.dumps(curves, indent=1) + "\n")
    write_curve_summaries(out, curves)

    print("\nlearning curves (train loss at a few updates; validation metric at every validation):")
    print(open(out / "learning_curves.txt").read())
    print(f"{'task':26s} {'metric':10s} {'test':>8s} {'target':>7s}  met?  {'comp':>8s}")
    for row in rows:
        v = "n/a" if row["value"] is None else f"{row['value']:.4f}"
        c = "n/a" if row["comp"] is None else f"{row['comp']:.4f}"
        target = "-" if row["target"] is None else f"{row['target']:.2f}"
        met = "-  " if row["met"] is None else "yes" if row["met"] else "NO "
        print(f"{row['task']:26s} {row['metric']:10s} {v:>8s} {target:>7s}  {met}  {c:>8s}")
    print("(test: held-out images drawn like train, where the targets apply; comp: compositional split, every "
          "image/text about a (colour, shape) pair never seen in training; image_classify cannot score there)")
    by_kind = {k: v["test"]["by_kind"] for k, v in results.items() if "by_kind" in v["test"]}
    if by_kind:
        print("\ntest score by kind (generator's question / hypothesis kinds; expression forms; rows in brackets):")
        for key, kinds in by_kind.items():
            print(f"  {key:14s} " + ", ".join(f"{k} {v['score']:.2f} ({v['n']})" for k, v in kinds.items()))
    anatomy = results.get("refcoco", {}).get("test", {}).get("anatomy")
    if anatomy:
        print("\ngrounding boxes on test by the referred object's size (hit / another object / no object of the scene):")
        for group, a in anatomy.items():
            print(f"  {group:6s} ({a['n']:4d})  {a['hit']:.2f} / {a['other']:.2f} / {a['none']:.2f}")
        same = results["refcoco"]["test"].get("same_box")
        if same and same["images"]:
            print(f"  one box for every expression of an image: {same['same_box']:.2f} of the {same['images']} images "
                  "whose expressions refer to different objects (1.00: the text is ignored)")
    if "caption" in results and "caption_scst" in results:
        a, b = results["caption"]["test"], results["caption_scst"]["test"]
        print(f"\nSCST: test CIDEr-D ('cider') {a.get('cider')} -> {b.get('cider')}; "
              f"pycocoevalcap CIDEr {a.get('CIDEr')} -> {b.get('CIDEr')}")
    print("\nwall time per stage (s):")
    for k, v in stages.times.items():
        print(f"  {k:28s} {v:8.1f}")
    print(f"  {'total':28s} {total:8.1f}  ({total / 60:.1f} min; budget {args.minutes:g} min)")
    print(f"\nwrote {out / 'metrics.json'}, {out / 'learning_curves.json'}, {out / 'learning_curves.csv'}")
    print("figures: " + (", ".join(figures) if figures else "none (install matplotlib: pip install -e '.[synth]')"))
    return 0



if __name__ == "__main__":
    sys.exit(main())
