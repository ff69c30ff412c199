"""``ofa-evaluate``: fairseq-generate style evaluation of a checkpoint over a data split.

    ofa-evaluate [DATA] --path CHECKPOINT [--task T] [--gen-subset test] [--results-path DIR]
                 [--batch-size 16] [--beam 5 --max-len-b 16 --lenpen 1 --nbest 1 ...] [--bpe-dir BPE] [--ema]
                 [--user-dir PLUGIN] [any evaluation option of the task]
    torchrun --nproc_per_node=N $(which ofa-evaluate) ...        # each rank evaluates its slice

The task and its options come from the checkpoint's saved task config; any option given on the command
line overrides them (``ofa-evaluate --path CKPT --help`` lists the task's). fairseq-generate's names
(``--beam``, ``--nbest``, ``--max-len-a/b``, ``--min-len``, ``--lenpen``, ``--unnormalized``,
``--no-repeat-ngram-size``) and the task's ``--eval-*`` ones are the same settings. Writes
``{results_path}/{gen_subset}_predict.json`` (the official per-task record layout; with ``--nbest N > 1``
each record also holds the ``N`` best hypotheses and their log-probabilities) and
``{gen_subset}_metrics.json`` (both atomically) and prints the metrics. Tasks may add corpus-level metrics
(captions: pycocoevalcap's BLEU, METEOR, ROUGE-L and CIDEr scorers, offline; METEOR needs Java).
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import os
import sys
import time
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ofa.cli.common import check_task, import_user_dir, run_cli, setup
from ofa.errors import ConfigError

logger = logging.getLogger("ofa.evaluate")

# fairseq-generate's option -> the task config field it sets
GENERATE_NAMES: Dict[str, str] = {
    "eval_beam": "--beam",
    "eval_max_len_a": "--max-len-a",
    "eval_max_len_b": "--max-len-b",
    "eval_min_len": "--min-len",
    "eval_len_penalty": "--lenpen",
    "eval_unnormalized": "--unnormalized",
    "eval_no_repeat_ngram_size": "--no-repeat-ngram-size",
}
# task config fields that only training reads (not listed by ofa-evaluate; `data` is the positional argument)
TRAINING_ONLY = frozenset({
    "data", "seed", "num_workers", "shuffle", "image_backbone_lr_scale", "augment", "unconstrained_training",
    "eval_print_samples", "text_data", "image_data", "detection_data", "text_selected_cols", "image_selected_cols",
    "detection_selected_cols", "neg_sample_dir", "mask_ratio", "poisson_lambda", "replace_length", "text_max_tokens",
    "pretrain_seed", "extras_every", "text_per_block", "image_per_block", "detection_per_block", "vl_max_scale",
    "no_vl_rand_augment", "eval_generate",
})


# ---------------------------------------------------------------------------------------------- options
def _field_type(tp) -> Tuple[Any, Optional[List[str]]]:
    """``(argparse type, choices)`` of a dataclass field type (``Optional`` unwrapped, fairseq's
    ``ChoiceEnum`` as its string choices)."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else str
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return str, [str(e.value) for e in tp]
    if tp in (int, float, str, bool):
        return tp, None
    return str, None


def add_task_options(parser: argparse.ArgumentParser, task_name: str) -> None:
    """The evaluation options of a registered task's config dataclass (``TRAINING_ONLY`` left out), with
    fairseq-generate's names beside the ``--eval-*`` ones. Defaults are ``None``: the checkpoint's saved
    values apply unless an option is given."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    dc = TASK_DATACLASS_REGISTRY[task_name]
    try:
        hints = typing.get_type_hints(dc)
    except Exception:  # an annotation a plugin cannot resolve: take the raw types
        hints = {f.name: f.type for f in dataclasses.fields(dc)}
    group = parser.add_argument_group(f"{task_name} options (default: the checkpoint's, else the task's)")
    for f in dataclasses.fields(dc):
        if f.name.startswith("_") or f.name in TRAINING_ONLY:
            continue
        names = [f"--{f.name.replace('_', '-')}"]
        if f.name in GENERATE_NAMES:
            names.insert(0, GENERATE_NAMES[f.name])
        if any(n in parser._option_string_actions for n in names):  # a shared option (--bpe-dir) already there
            continue
        tp, choices = _field_type(hints.get(f.name, str))
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} (task default: {getattr(default, 'value', default)})"
        if tp is bool:
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(*names, dest=f.name, type=tp, choices=choices, default=None, metavar=None
                               if choices else f.name.upper().split("_")[-1], help=help_text)


def build_parser(task_name: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser; without ``task_name`` only the options every task shares (``--help`` with no checkpoint)."""
    parser = argparse.ArgumentParser(
        prog="ofa-evaluate", description="Evaluate a checkpoint over a data split, as fairseq-generate does.",
        epilog=None if task_name else "The task's own options are listed by: ofa-evaluate --path CHECKPOINT --help")
    parser.add_argument("data", nargs="?", default=None,
                        help="data file(s), comma-separated; the last one is evaluated (default: the data the "
                             "checkpoint was trained with, as saved in it)")
    parser.add_argument("--path", required=True, help="checkpoint path, URL or published name")
    parser.add_argument("--task", default=None, help="task (default: the checkpoint's)")
    parser.add_argument("--bpe-dir", default=None, help="tokenizer folder (default: the checkpoint's)")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    parser.add_argument("--user-dir", help="plugin folder with extra tasks (as for ofa-train)")
    parser.add_argument("--gen-subset", default="test", help="label of the evaluated split (file names)")
    parser.add_argument("--results-path", default=".", help="where the JSON files go")
    parser.add_argument("--batch-size", "--max-sentences", type=int, default=16, help="samples per batch")
    parser.add_argument("--nbest", type=int, default=1,
                        help="keep the N best hypotheses of each sample in the records (generating tasks)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    parser.add_argument("--fp16", action="store_true", help="half precision on the GPU")
    parser.add_argument("--no-progress-bar", action="store_true", help="no progress bar over the batches")
    parser.add_argument("--verbose", action="store_true", help="every log line and warning; tracebacks")
    if task_name is None:
        gen = parser.add_argument_group("generation (fairseq-generate's names; also --eval-beam, --eval-max-len-b ...)")
        gen.add_argument("--beam", type=int, metavar="N", help="beam size")
        gen.add_argument("--max-len-a", type=float, metavar="A", help="max length = A * source length + B")
        gen.add_argument("--max-len-b", type=int, metavar="B", help="max length = A * source length + B")
        gen.add_argument("--min-len", type=int, metavar="N", help="minimum generated length")
        gen.add_argument("--lenpen", type=float, metavar="P", help="length penalty")
        gen.add_argument("--unnormalized", action="store_true", help="do not normalise scores by length")
        gen.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="block repeated n-grams")
    else:
        add_task_options(parser, task_name)
    return parser


# ---------------------------------------------------------------------------------------------- running
def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def _move(sample, device):
    from fairseq import utils

    return utils.move_to_cuda(sample, device) if device.type == "cuda" else sample


def _atomic_json(path: str, obj) -> None:
    from ofa.io_utils import write_atomic

    write_atomic(path, json.dumps(obj, indent=1))


def _nbest(task, hyps, n: int) -> List[Dict[str, Any]]:
    """The ``n`` best hypotheses of one sample: text (special tokens kept: boxes read as ``<bin_i>``) and
    log-probability (the generator's score: length-normalised unless ``--unnormalized``)."""
    out = []
    for h in hyps[:n]:
        text = task.tokenizer.decode(h["tokens"], skip_special=False).replace("</s>", "").strip()
        out.append({"hypothesis": text, "logprob": round(float(h["score"]), 6)})
    return out


def evaluate(model, task, split: str, batch_size: int, device, nbest: int = 1,
             progress: bool = True) -> Dict[str, Any]:
    """Run ``task.inference`` over this rank's slice of ``split``; returns records, scores and sizes."""
    from tqdm import tqdm

    task.load_dataset(split)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(dataset, max_sentences=batch_size).next_epoch_itr(shuffle=False)
    from ofa.inference import recording_generator

    recorder = recording_generator(task, model, {}) if nbest > 1 and getattr(task, "generator", None) else None
    if recorder is not None:
        task.generator = recorder
    records: List[Dict[str, Any]] = []
    total, count = 0.0, 0
    extra: Dict[str, List[Any]] = {"predictions": [], "refs": []}
    start = time.perf_counter()
    bar = tqdm(itr, total=len(itr), desc=f"ofa-evaluate {split}", unit="batch", disable=not progress or None,
               leave=False, file=sys.stderr)
    try:
        for sample in bar:
            if not sample:
                continue
            sample = _move(sample, device)
            if recorder is not None:
                recorder.hyps = None
            with torch.no_grad():
                preds = task.inference(model, sample)
            scores = task.score(preds, sample)
            keep = [not p for p in sample["padding_rows"]]
            recs = task.prediction_records(preds, sample)
            for i, k in enumerate(keep):
                if k:
                    if recorder is not None and recorder.hyps is not None:
                        recs[i]["nbest"] = _nbest(task, recorder.hyps[i], nbest)
                    records.append(recs[i])
                    total += scores[i]
                    count += 1
                    extra["predictions"].append(preds[i])
                    if "refs" in sample:
                        extra["refs"].append(sample["refs"][i])
    finally:
        bar.close()
        if recorder is not None:
            task.generator = recorder.generator
    return {"records": records, "score_sum": total, "score_cnt": count, "seconds": time.perf_counter() - start,
            "skipped_rows": dataset.skipped, **extra}


def _merge(gathered: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    merged = {"records": [], "score_sum": 0.0, "score_cnt": 0, "predictions": [], "refs": [], "skipped_rows": 0,
              "seconds": max(g["seconds"] for g in gathered)}
    for g in gathered:
        for key in ("records", "predictions", "refs"):
            merged[key] += g[key]
        for key in ("score_sum", "score_cnt", "skipped_rows"):
            merged[key] += g[key]
    return merged


def _is_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def evaluate_command(argv: Optional[Sequence[str]] = None) -> int:
    """``ofa-evaluate`` without the one-line error handling of ``main``: user mistakes raise
    ``ofa.errors.UserError`` subclasses (tests and scripts call this)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if a != "--verbose"]
    base = build_parser()
    if _is_help(argv) and "--path" not in argv and not any(a.startswith("--path=") for a in argv):
        base.print_help()
        return 0
    pre = argparse.ArgumentParser(add_help=False, prog="ofa-evaluate")
    for action in base._actions:  # every shared option, so that their values are not taken for DATA
        if action.option_strings and action.dest != "help":
            pre._add_action(action)
    pre.add_argument("data", nargs="?")
    known, _ = pre.parse_known_args(argv)
    setup()
    import_user_dir(known.user_dir)  # plugin tasks must be registered before the checkpoint's task is looked up
    if known.task:
        check_task(known.task)
    if known.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {known.batch_size}")
    from fairseq.tasks import TASK_REGISTRY

    from ofa.checkpoint import load_model
    from ofa.data_utils.sniff import layout_mismatch
    from ofa.hub import resolve_checkpoint
    from ofa.task_config import build_task_config

    model, _, info = load_model(resolve_checkpoint(known.path), bpe_dir=known.bpe_dir, ema=known.ema)
    task_name = known.task or info.task.get("_name")
    if not task_name:
        raise ConfigError(f"{known.path} does not say which task it is for: pass --task")
    check_task(task_name, option="the checkpoint's task")
    parser = build_parser(task_name)
    args = parser.parse_args(argv)
    if args.nbest < 1:
        raise ConfigError(f"--nbest must be at least 1, got {args.nbest}")
    cli = {k: v for k, v in vars(args).items() if v is not None}
    saved = dict(info.task, bpe_dir=info.bpe_dir or info.task.get("bpe_dir"))  # the folder the model loaded with
    cfg = build_task_config(task_name, saved, cli, checkpoint=info)
    beam = getattr(cfg, "eval_beam", None)
    if beam is not None and args.nbest > beam:
        raise ConfigError(f"--nbest {args.nbest} is more than the beam size {beam}: raise --beam")
    if not cfg.data:
        raise ConfigError("no data file: give DATA (the checkpoint saved none)")
    data_file = cfg.data.split(",")[-1]
    if not os.path.isfile(data_file):
        raise ConfigError(f"data file not found: {data_file}")
    task_cls = TASK_REGISTRY[task_name]
    if getattr(task_cls, "schema", "") and not getattr(cfg, "selected_cols", None):
        mismatch = layout_mismatch(data_file, task_cls.schema, task_name)
        if mismatch:
            raise ConfigError(mismatch)
    task = task_cls.setup_task(cfg)
    rank, world = _distributed()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() and not args.cpu \
        else torch.device("cpu")
    model.to(device)
    if args.fp16 and device.type == "cuda":
        model.half()
    task.generator = task.build_generator([model])
    out = evaluate(model, task, args.gen_subset, args.batch_size, device, nbest=args.nbest,
                   progress=not args.no_progress_bar and rank == 0)
    if world > 1:  # gather every rank's records and sums
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, out)
        out = _merge(gathered)
    if rank != 0:
        return 0
    metrics = {task.metric_name: round(out["score_sum"] / max(out["score_cnt"], 1), 4),
               "count": out["score_cnt"], "skipped_rows": out["skipped_rows"],
               "samples_per_s": round(out["score_cnt"] / max(out["seconds"], 1e-9), 3)}
    metrics.update({k: round(v, 4) for k, v in task.corpus_metrics(out["predictions"], out["refs"]).items()})
    os.makedirs(args.results_path, exist_ok=True)
    _atomic_json(os.path.join(args.results_path, f"{args.gen_subset}_predict.json"), out["records"])
    _atomic_json(os.path.join(args.results_path, f"{args.gen_subset}_metrics.json"), metrics)
    print(json.dumps(metrics))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli("ofa-evaluate", evaluate_command, argv)


if __name__ == "__main__":
    sys.exit(main())
