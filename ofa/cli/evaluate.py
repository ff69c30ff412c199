"""``ofa-evaluate``: fairseq-generate style evaluation of a checkpoint over a data split.

    ofa-evaluate DATA --path CHECKPOINT [--task T] [--gen-subset test] [--results-path DIR]
                 [--batch-size 16] [--bpe-dir BPE] [--ema] [--user-dir PLUGIN] [--eval-beam 5 ... any task option]
    torchrun --nproc_per_node=N $(which ofa-evaluate) ...        # each rank evaluates its slice

The task and its options come from the checkpoint's saved task config; any task option given on the
command line overrides them. Writes ``{results_path}/{gen_subset}_predict.json`` (the official
per-task record layout) and ``{gen_subset}_metrics.json`` (both atomically) and prints the metrics.
Tasks may add corpus-level metrics (captions: pycocoevalcap's BLEU, METEOR, ROUGE-L and CIDEr
scorers, offline; METEOR needs Java).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List

import torch

from ofa.cli.common import import_user_dir, setup
from ofa.task_config import build_task_config

logger = logging.getLogger("ofa.evaluate")


def _task_options(parser: argparse.ArgumentParser, task_name: str):
    from fairseq.dataclass.utils import gen_parser_from_dataclass
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    if task_name not in TASK_DATACLASS_REGISTRY:
        raise SystemExit(f"unknown task {task_name!r}")
    group = parser.add_argument_group(f"{task_name} options")
    gen_parser_from_dataclass(group, TASK_DATACLASS_REGISTRY[task_name](), delete_default=True)
    return TASK_DATACLASS_REGISTRY[task_name]


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


def evaluate(model, task, split: str, batch_size: int, device) -> Dict[str, Any]:
    """Run ``task.inference`` over this rank's slice of ``split``; returns records, scores and sizes."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(dataset, max_sentences=batch_size).next_epoch_itr(shuffle=False)
    records: List[Dict[str, Any]] = []
    total, count = 0.0, 0
    extra: Dict[str, List[Any]] = {"predictions": [], "refs": []}
    start = time.perf_counter()
    for sample in itr:
        if not sample:
            continue
        sample = _move(sample, device)
        with torch.no_grad():
            preds = task.inference(model, sample)
        scores = task.score(preds, sample)
        keep = [not p for p in sample["padding_rows"]]
        recs = task.prediction_records(preds, sample)
        for i, k in enumerate(keep):
            if k:
                records.append(recs[i])
                total += scores[i]
                count += 1
                extra["predictions"].append(preds[i])
                if "refs" in sample:
                    extra["refs"].append(sample["refs"][i])
    return {"records": records, "score_sum": total, "score_cnt": count, "seconds": time.perf_counter() - start,
            "skipped_rows": dataset.skipped, **extra}


def main(argv=None) -> int:
    setup()
    from fairseq.tasks import TASK_REGISTRY

    from ofa.checkpoint import load_model

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--path", required=True)
    pre.add_argument("--task")
    pre.add_argument("--bpe-dir")
    pre.add_argument("--ema", action="store_true")
    pre.add_argument("--user-dir")
    known, _ = pre.parse_known_args(argv)
    import_user_dir(known.user_dir)  # plugin tasks must be registered before the checkpoint's task is looked up
    path = known.path
    try:
        from ofa.hub import resolve_checkpoint

        path = resolve_checkpoint(path)
    except ImportError:
        pass
    model, _, info = load_model(path, bpe_dir=known.bpe_dir, ema=known.ema)
    task_name = known.task or info.task.get("_name")
    if not task_name:
        raise SystemExit("the checkpoint does not say which task it is for: pass --task")

    parser = argparse.ArgumentParser(prog="ofa-evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", help="data file(s); the last is evaluated (default: the checkpoint's)")
    parser.add_argument("--path", required=True, help="checkpoint path, URL or published name")
    parser.add_argument("--task", default=task_name)
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    parser.add_argument("--user-dir", help="plugin folder with extra tasks (as for ofa-train)")
    parser.add_argument("--gen-subset", default="test", help="label of the evaluated split (file names)")
    parser.add_argument("--results-path", default=".", help="where the JSON files go")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    parser.add_argument("--fp16", action="store_true", help="half precision on the GPU")
    _task_options(parser, task_name)
    args = parser.parse_args(argv)
    cli = {k: v for k, v in vars(args).items()}
    if args.data:
        cli["data"] = args.data
    cli["bpe_dir"] = cli.get("bpe_dir") or known.bpe_dir or info.task.get("bpe_dir")
    cfg = build_task_config(task_name, info.task, cli)
    task = TASK_REGISTRY[task_name].setup_task(cfg)
    rank, world = _distributed()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() and not args.cpu \
        else torch.device("cpu")
    model.to(device)
    if args.fp16 and device.type == "cuda":
        model.half()
    task.generator = task.build_generator([model])
    out = evaluate(model, task, args.gen_subset, args.batch_size, device)
    if world > 1:  # gather every rank's records and sums
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, out)
        merged = {"records": [], "score_sum": 0.0, "score_cnt": 0, "predictions": [], "refs": [], "skipped_rows": 0,
                  "seconds": max(g["seconds"] for g in gathered)}
        for g in gathered:
            for key in ("records", "predictions", "refs"):
                merged[key] += g[key]
            for key in ("score_sum", "score_cnt", "skipped_rows"):
                merged[key] += g[key]
        out = merged
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


if __name__ == "__main__":
    sys.exit(main())
