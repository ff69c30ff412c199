"""The main job's recipe: the model, the benchmark's size, each task's budget and options, the targets.

Sized for about 15 minutes of a quiet 2-core CPU (``ofa-synth run``; ``--minutes`` scales the updates,
``--set TASK.KEY=VALUE`` overrides one entry through ``apply_overrides``). The measurements behind the
choices are in ``experiments/README.md``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, Tuple

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
    # official scale leaves attention near uniform for long (experiments/README.md, "What the main job reaches")
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
# (the region tasks have no target: their metric is reported)
TARGETS = {
    "caption": ("cider", 1.0),
    "refcoco": ("acc", 0.70),
    "vqa_gen": ("vqa_score", 0.75),
    "snli_ve": ("snli_score", 0.80),
    "image_classify": ("accuracy", 0.90),
    "detection": ("ap50", None),
    "region_caption": ("cider", None),
    "image_text_match": ("i2t_r1", None),
}
FILES = {"caption": "caption", "refcoco": "refcoco", "vqa_gen": "vqa", "snli_ve": "snli_ve",
         "image_classify": "image_classify", "detection": "detection", "region_caption": "region_caption",
         "image_text_match": "caption"}
ALIASES = {"vqa": "vqa_gen", "snli": "snli_ve", "entailment": "snli_ve", "grounding": "refcoco",
           "classify": "image_classify", "classification": "image_classify", "grounded_caption": "region_caption",
           "itm": "image_text_match", "retrieval": "image_text_match"}

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
    # the region and retrieval tasks: not in the default run (``DEFAULT_TASKS``); ``--tasks detection,...``
    "detection": dict(updates=600, batch=32, lr=1e-3, warmup=25, valid_every=300, valid_rows=100, init=None,
                      args=["--class-names", "{data}/class_names.txt", "--max-objects", "6"]),
    "region_caption": dict(updates=300, batch=32, lr=1e-3, warmup=25, valid_every=150, valid_rows=64, init=None,
                           args=["--eval-beam", "3", "--eval-max-len-b", "12", "--eval-no-repeat-ngram-size", "4"]),
    # retrieval over the caption files: every image against every reference text of its split, so the first 50
    # images (and their 250 texts) only
    "image_text_match": dict(updates=300, batch=32, lr=1e-3, warmup=25, valid_every=150, valid_rows=30, init=None,
                             args=["--max-eval-images", "50"]),
}
# what ``ofa-synth run`` trains without ``--tasks`` (the 15-minute budget)
DEFAULT_TASKS = ("image_classify", "vqa_gen", "refcoco", "snli_ve", "caption")
# caption stage 2: SCST from the stage-1 checkpoint, as the official stage 2: one row per image with all its
# references (``write_caption_refs``; with one reference per row SCST's gains were small, and negative in
# two of seven runs), the lr decaying linearly to 0 (experiments/README.md, "What the main job reaches")
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


def bin_range(tok_dir: Path) -> Tuple[int, int]:
    """Ids ``[start, end)`` of the ``<bin_i>`` tokens of the job's tokenizer folder: fairseq's 4 specials,
    the text symbols of ``dict.txt``, ``<mask>``, the ``CODE_DICT_SIZE`` codes, then the ``NUM_BINS`` bins."""
    n = sum(1 for line in open(Path(tok_dir) / "dict.txt", encoding="utf-8") if line.strip())
    start = 4 + n + 1 + CODE_DICT_SIZE
    return start, start + NUM_BINS


def quick(recipe: Dict[str, Dict[str, Any]], scst: Dict[str, Any]) -> None:
    """The ``--quick`` smoke budget, in place: a dozen updates per task."""
    for r in recipe.values():
        r.update(updates=QUICK["updates"], valid_every=QUICK["valid_every"], valid_rows=QUICK["valid_rows"], warmup=2)
    scst.update(updates=QUICK["scst_updates"], valid_every=QUICK["scst_updates"])


def scale_budget(recipe: Dict[str, Dict[str, Any]], scst: Dict[str, Any], minutes: float) -> float:
    """Scale every task's updates, validation interval and warm-up to a ``minutes`` budget, in place;
    returns the factor (only the training time scales, not ``FIXED_OVERHEAD_S``)."""
    scale = max(0.05, (minutes * 60 - FIXED_OVERHEAD_S) / (15 * 60 - FIXED_OVERHEAD_S))
    for r in list(recipe.values()) + [scst]:
        r["updates"] = max(4, int(round(r["updates"] * scale)))
        r["valid_every"] = max(2, int(round(r["valid_every"] * scale)))
        if "warmup" in r:
            r["warmup"] = max(1, int(round(r["warmup"] * scale)))
    return scale


def apply_overrides(recipe: Dict[str, Dict[str, Any]], scst: Dict[str, Any], sets: Iterable[str]) -> None:
    """``--set TASK.KEY=VALUE`` items, in place (``scst.KEY`` for caption stage 2; ``TASK.args+=...`` appends
    options); values are read as JSON where they parse, else as strings."""
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


