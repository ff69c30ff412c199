#!/usr/bin/env python
"""The README's MAIN JOB: generate the embedded benchmark, train a small OFA on every task, evaluate on
the held-out TEST split (and the compositional COMP split) and print a metrics table.

    bash scripts/setup.sh && .venv/bin/python scripts/main_job.py            # the tuned recipe
    .venv/bin/python scripts/main_job.py --quick                              # 1-2 minute smoke run
    .venv/bin/python scripts/main_job.py --tasks caption,refcoco --out runs/two_tasks

Stages (each one a subprocess of the installed command-line tools next to ``sys.executable``):

1. ``ofa-data synth``       the benchmark (skipped when ``DATA/manifest.json`` matches the settings)
2. ``ofa-tokenizer train``  a SentencePiece BPE tokenizer on the training text (skipped when present)
3. ``ofa-train``            one small model per task (``--log-format json --log-file``); a task starts
                            from another task's final weights (``init`` in the recipe). The chain
                            opens with classification from scratch, an ImageNet-style visual start
                            (colour and shape of the dominant object), then VQA -> entailment ->
                            caption, each reusing what the earlier ones learned about colours, shapes
                            and positions; grounding trains from scratch (from the VQA weights it
                            learned less: README). ``--set TASK.init=null`` trains a task from
                            scratch, ``--set TASK.init='"path.pt"'`` from a checkpoint
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
validation), ``learning_curves.csv`` / ``learning_curves.txt`` (a compact summary), and per task its
checkpoint folder, training log and evaluation results.

The recipe (``RECIPE`` below) is sized for about 15 minutes of a quiet 2-core CPU. ``--minutes M``
scales every task's number of updates by ``(M - fixed overhead) / (15 - fixed overhead)``;
``--set TASK.KEY=VALUE`` overrides one recipe entry (e.g. ``--set refcoco.updates=400``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from data_utils.synth.breakdown import TSV_NAME, answer_table, breakdown, grounding_anatomy, same_box_share  # noqa: E402  (torch only when called)

# ----------------------------------------------------------------------------------------- the recipe
# The model: OFA's layout (pre-LN encoder-decoder, shared embeddings, relative position biases) at a
# CPU size; a timm ResNet-10t truncated at stride 16 turns a 64 x 64 image into a 4 x 4 patch grid.
MODEL_ARGS = [
    "--arch", "ofa_tiny",
    "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
    "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256",
    "--encoder-layers", "2", "--decoder-layers", "2",
    "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
    "--resnet-type", "timm:resnet10t",
    "--entangle-position-embedding", "--add-type-embedding",
    # the layers' attention / FFN weights drawn at 3x the official 0.02 (``ofa.model.init``): at width 128 the
    # official scale leaves attention near uniform for long (README, "What the main job reaches")
    "--layer-init-std", "0.06",
]
DATA = dict(num_images=2300, image_size=64, seed=0)  # train 1610, valid/test/comp 230 each
TOKENIZER = dict(vocab_size=500, model_type="bpe")
# the vocabulary's image-code and location-bin families: this job generates no images (1 code is the
# minimum the dictionary layout allows); 32 bins are 2 px apart on the 64 px image (max rounding error 1 px)
CODE_DICT_SIZE = 1
NUM_BINS = 32

# the splits every model is evaluated on: the i.i.d. held-out test split (targets) and the compositional one
EVAL_SPLITS = ("test", "comp")  # comp only with --comp (its evaluations cost ~1.5 min of the budget)
# targets on the TEST split (issue): metric key in ofa-evaluate's output -> minimum
TARGETS = {
    "caption": ("cider", 1.0),
    "refcoco": ("acc", 0.70),
    "vqa_gen": ("vqa_score", 0.75),
    "snli_ve": ("snli_score", 0.80),
    "image_classify": ("accuracy", 0.90),
}
FILES = {"caption": "caption", "refcoco": "refcoco", "vqa_gen": "vqa", "snli_ve": "snli_ve",
         "image_classify": "image_classify"}
ALIASES = {"vqa": "vqa_gen", "snli": "snli_ve", "entailment": "snli_ve", "grounding": "refcoco",
           "classify": "image_classify", "classification": "image_classify"}

# VQA validates and evaluates by trie-constrained beam search: the answers allcand scoring picks (summed
# log-probabilities, beam 5 over 42 candidates) about 4x faster. Entailment keeps allcand: its decoder
# prompt is the whole source and its three answers fit in one step, so scoring them (36-39 samples/s,
# bench_tasks.py) stays faster than beam search (19.8 samples/s with the prompt prefill)
BEAM_EVAL = ["--val-inference-type", "beamsearch"]
# per task: updates, batch size, peak lr, warmup, validation every N updates, validation rows, and the
# task / criterion options (generation for validation and test)
RECIPE: Dict[str, Dict[str, Any]] = {
    "image_classify": dict(updates=420, batch=32, lr=1e-3, warmup=20, valid_every=210, valid_rows=100,
                           args=["--ans2label-file", "{data}/class_names.txt", "--prompt-type", "prev_output"]),
    "vqa_gen": dict(updates=450, batch=32, lr=1e-3, warmup=25, valid_every=225, valid_rows=100, init="image_classify",
                    args=["--ans2label-file", "{data}/vqa_ans2label.json", "--prompt-type", "prev_output",
                          *BEAM_EVAL]),
    "refcoco": dict(updates=530, batch=32, lr=1e-3, warmup=25, valid_every=265, valid_rows=100, init=None,
                    args=["--eval-beam", "1"], bins_constraint=True),
    "snli_ve": dict(updates=400, batch=32, lr=1e-3, warmup=25, valid_every=200, valid_rows=100, init="vqa_gen",
                    args=["--prompt-type", "prev_output"]),
    "caption": dict(updates=200, batch=32, lr=1e-3, warmup=25, valid_every=100, valid_rows=64, init="snli_ve",
                    args=["--eval-beam", "3", "--eval-max-len-b", "20", "--eval-no-repeat-ngram-size", "4"]),
}
# caption stage 2: SCST from the stage-1 checkpoint, as the official stage 2: one row per image with all its
# references (``write_caption_refs``; with one reference per row SCST's gains were small, and negative in
# two of seven runs), the lr decaying linearly to 0 (README, "What the main job reaches")
# the reward's document frequencies come from the whole training split (``ofa-data cider-df``), as the
# official ``coco-train-words.p``; per batch they gave 1.647 / 1.592, corpus-wide 1.643 / 1.673 (one checkpoint)
SCST = dict(updates=80, batch=16, lr=5e-5, end_lr=0.0, cider_df=True, valid_every=40,
            args=["--scst-beam", "4", "--scst-max-len-b", "20", "--scst-no-repeat-ngram-size", "4"])
COMMON = ["--cpu", "--optimizer", "adam", "--adam-betas", "(0.9,0.999)", "--adam-eps", "1e-8",
          "--weight-decay", "0.01", "--clip-norm", "1.0", "--lr-scheduler", "polynomial_decay",
          "--num-workers", "0", "--seed", "1", "--log-format", "json", "--log-interval", "10",
          "--no-epoch-checkpoints", "--save-interval", "1000000", "--validate-interval", "1000000",
          "--required-batch-size-multiple", "1"]
QUICK = dict(num_images=200, updates=12, valid_every=6, valid_rows=16, scst_updates=4)
# seconds the recipe spends outside training (start-up of ~12 tool processes, synth, evaluation);
# --minutes scales only the remaining training time
FIXED_OVERHEAD_S = 130.0


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
                                    cwd=str(ROOT))
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


def write_subset(src: Path, dst: Path, rows: int) -> None:
    """The first ``rows`` lines of a TSV (a small validation split: validation generates, so it costs)."""
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
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
    with open(dst, "w", encoding="utf-8") as g:
        for cols in rows.values():
            g.write("\t".join(cols) + "\n")
    return len(rows)


def bin_range(tok_dir: Path) -> Tuple[int, int]:
    """Ids of the ``<bin_i>`` tokens: fairseq's 4 specials, dict.txt, ``<mask>``, the codes, the bins."""
    n = sum(1 for line in open(tok_dir / "dict.txt", encoding="utf-8") if line.strip())
    start = 4 + n + 1 + CODE_DICT_SIZE
    return start, start + NUM_BINS


def prepare_data(data: Path, num_images: int, image_size: int, seed: int, stages: "Stages") -> Path:
    """1. the benchmark (skipped when ``data/manifest.json`` matches), 2. its tokenizer; returns the
    tokenizer folder."""
    manifest = data / "manifest.json"
    want = dict(num_images=num_images, seed=seed, image_size=[image_size, image_size],
                generator_version=runpy.run_path(str(ROOT / "data_utils" / "synth" / "version.py"))["GENERATOR_VERSION"])
    have = json.loads(manifest.read_text()) if manifest.exists() else {}
    if all(have.get(k) == v for k, v in want.items()) and "comp" in have.get("images_per_split", {}):
        print(f"benchmark: {data} matches ({num_images} images, {image_size} px, seed {seed}, generator version "
              f"{want['generator_version']}); skipped")
    else:
        stages.run("synth", [tool("ofa-data"), "synth", str(data), "--num-images", str(num_images), "--image-size",
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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/main_job", help="output folder (default runs/main_job)")
    p.add_argument("--data", default=None, help="benchmark folder (default OUT/data)")
    p.add_argument("--tasks", default=",".join(RECIPE), help=f"comma list of tasks (default all: {','.join(RECIPE)})")
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


def apply_overrides(recipe, scst, sets):
    for item in sets:
        key, sep, value = item.partition("=")
        task, dot, field = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set expects TASK.KEY=VALUE, got {item!r}")
        task = ALIASES.get(task, task)
        target = scst if task == "scst" else recipe.get(task)
        if target is None:
            raise SystemExit(f"--set: unknown task {task!r}")
        if field == "args+":
            target["args"] = list(target.get("args", [])) + value.split()
            continue
        try:
            target[field] = json.loads(value)
        except ValueError:
            target[field] = value


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
        for r in recipe.values():
            r.update(updates=QUICK["updates"], valid_every=QUICK["valid_every"], valid_rows=QUICK["valid_rows"],
                     warmup=2)
        scst.update(updates=QUICK["scst_updates"], valid_every=QUICK["scst_updates"])
    elif args.minutes != 15.0:
        scale = max(0.05, (args.minutes * 60 - FIXED_OVERHEAD_S) / (15 * 60 - FIXED_OVERHEAD_S))
        for r in list(recipe.values()) + [scst]:
            r["updates"] = max(4, int(round(r["updates"] * scale)))
            r["valid_every"] = max(2, int(round(r["valid_every"] * scale)))
            if "warmup" in r:
                r["warmup"] = max(1, int(round(r["warmup"] * scale)))
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
                   *model_args, *COMMON, "--criterion", "scst_reward_criterion", "--scst",
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
                         met=None if value is None else value >= target, comp=comp))
    report = {"command": " ".join(map(_quote, [sys.executable, *sys.argv])), "data": str(data),
              "num_images": num_images, "image_size": args.image_size, "model_args": model_args,
              "recipe": recipe, "scst": scst if "caption_scst" in results else None,
              "rows": rows, "test": {k: v["test"] for k, v in results.items()},
              "comp": {k: v["comp"] for k, v in results.items() if "comp" in v},
              "stage_seconds": stages.times, "total_seconds": round(total, 1)}
    (out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "learning_curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    write_curve_summaries(out, curves)

    print("\nlearning curves (train loss at a few updates; validation metric at every validation):")
    print(open(out / "learning_curves.txt").read())
    print(f"{'task':26s} {'metric':10s} {'test':>8s} {'target':>7s}  met?  {'comp':>8s}")
    for row in rows:
        v = "n/a" if row["value"] is None else f"{row['value']:.4f}"
        c = "n/a" if row["comp"] is None else f"{row['comp']:.4f}"
        print(f"{row['task']:26s} {row['metric']:10s} {v:>8s} {row['target']:>7.2f}  {'yes' if row['met'] else 'NO ':3s}"
              f"  {c:>8s}")
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
    return 0


def write_curve_summaries(out: Path, curves: Dict[str, Any]) -> None:
    with open(out / "learning_curves.csv", "w", newline="") as f:
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
    (out / "learning_curves.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
