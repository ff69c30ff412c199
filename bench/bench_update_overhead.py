"""Where a training update of the main job goes: fairseq's whole update vs the bare forward + backward + optimizer.

Prints numbers; it is not a test. From the repository root:

    .venv/bin/python bench/bench_update_overhead.py [--tasks image_classify,vqa_gen,refcoco,snli_ve,caption]
        [--updates 12] [--threads 2] [--profile 3] [--json PATH] [--data DIR] [--num-images 200]

For every task the main job trains (``ofa_synth.recipe``: its model, batch size, image size, criterion and
task options, the ``ofa-train`` command ``ofa_synth.main_job`` runs), on an embedded benchmark written to a
temporary folder (or ``--data DIR``, an ``ofa-synth generate`` folder with a ``tok`` tokenizer):

- **update**: one iteration of fairseq's training loop (``fairseq_cli.train.train`` as ``ofa-train`` patches
  it): ``Trainer.train_step`` (seed, zero_grad, the task's ``train_step`` through the real criterion, grad
  scaling and clipping, the optimizer and lr-scheduler steps, logging outputs reduced into fairseq's meters),
  the log line every ``--log-interval`` updates and ``validate_and_save``'s checks;
- **fwd+bwd+opt**: the bare step on the same batch and a copy of the model: ``model(**net_input)``, a summed
  cross-entropy, ``backward``, gradient clipping and ``torch.optim.AdamW`` (foreach) with the recipe's settings;
- **overhead** = update - fwd+bwd+opt, and its sources: a ``cProfile`` of ``--profile`` updates, cumulative
  seconds per update of the named parts of the step (constraint masks, criterion beyond the model, fairseq's
  optimizer beyond a foreach AdamW, metric logging, ...) and the top functions by own time;
- **ops**: the aten ops one update and one bare step dispatch that would each launch a kernel on a GPU (views
  and allocations left out), by Python caller, and the ops that would make the host wait for the device
  (``.item()``-like reads, boolean-mask indexing, ``nonzero``, ``repeat_interleave`` without a size): on a GPU a
  model this small is bound by launches and syncs, which the CPU's clock does not show;
- **loader**: samples/s one loader worker builds (read + decode + resize + tokenise, random order, as the
  shuffled training split is read) from the TSV and from an HDF5 copy, and rows/s read alone, next to the
  training samples/s (batch / update) that one worker has to feed, and what building one batch adds to an
  update where the loader runs in the training process (the main job's ``--num-workers 0``).

Times are medians over ``--updates`` updates after two warm-up updates, each update followed by the bare step
on the same batch; the overhead is the median of these pairs' differences (on a shared machine a step can take
twice as long as the next one, and a pair is hit alike more often than two medians). The main job runs ``--cpu`` with
2 torch threads (``--threads``). ``--json PATH`` writes everything, including the unrounded loss of every
update and a checksum of the weights after it (seeded: the same code and data give the same numbers, so a
change can be checked for numerics).
"""
from __future__ import annotations

import argparse
import ast
import copy
import cProfile
import json
import logging
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ofa_synth.recipe import CODE_DICT_SIZE, COMMON, FILES, MODEL_ARGS, RECIPE, TOKENIZER, NUM_BINS, bin_range

DEFAULT_TASKS = ("image_classify", "vqa_gen", "refcoco", "snli_ve", "caption")
WARMUP = 2

# named parts of an update: label -> (file suffix, function name); cumulative seconds from cProfile
PARTS: Dict[str, Tuple[str, str]] = {
    "train_step (fairseq Trainer)": ("fairseq/trainer.py", "train_step"),
    "task.train_step": ("fairseq/tasks/fairseq_task.py", "train_step"),
    "constraint masks": ("tasks/closed_set.py", "add_constraints"),
    "criterion forward": ("criterions/label_smoothed_cross_entropy.py", "forward"),
    "model forward": ("model/ofa_model.py", "forward"),
    "criterion loss (compute_loss)": ("criterions/label_smoothed_cross_entropy.py", "compute_loss"),
    "backward": ("torch/_tensor.py", "backward"),
    "multiply grads": ("fairseq/optim/fairseq_optimizer.py", "multiply_grads"),
    "clip grads": ("fairseq/trainer.py", "clip_grad_norm"),
    "optimizer step": ("fairseq/tasks/fairseq_task.py", "optimizer_step"),
    "zero_grad": ("fairseq/trainer.py", "zero_grad"),
    "set seed": ("fairseq/trainer.py", "_set_seed"),
    "reduce + log stats": ("fairseq/trainer.py", "_reduce_and_log_stats"),
    "criterion.reduce_metrics": ("criterions/label_smoothed_cross_entropy.py", "reduce_metrics"),
    "set_num_updates (lr scheduler)": ("fairseq/trainer.py", "set_num_updates"),
    "loop: log line": ("fairseq_cli/train.py", "get_training_stats"),
    "loop: validate_and_save": ("fairseq_cli/train.py", "validate_and_save"),
}


# ------------------------------------------------------------------------------------------------ data
def make_data(num_images: int, image_size: int, folder: str) -> str:
    """An embedded benchmark with the main job's tokenizer settings in ``folder``; returns its path."""
    from ofa.tokenizer import train_sentencepiece
    from ofa_synth.writer import main as synth_main

    data = os.path.join(folder, "synth")
    synth_main([data, "--num-images", str(num_images), "--image-size", str(image_size), "--seed", "0", "--quiet"])
    train_sentencepiece(os.path.join(data, "text_corpus.txt"), os.path.join(data, "tok"),
                        vocab_size=TOKENIZER["vocab_size"], model_type=TOKENIZER["model_type"])
    return data


def train_argv(task: str, data: str, image_size: int, save_dir: str) -> List[str]:
    """The ``ofa-train`` arguments ``ofa_synth.main_job`` gives ``task`` (the full validation file)."""
    r, name = RECIPE[task], FILES[task]
    crit = ["--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing",
            str(r.get("label_smoothing", 0.1))]
    if r.get("bins_constraint"):
        start, end = bin_range(os.path.join(data, "tok"))
        crit += ["--constraint-range", f"{start},{end}"]
    return [f"{data}/{name}_train.tsv,{data}/{name}_valid.tsv", "--task", task, "--bpe-dir", f"{data}/tok",
            *MODEL_ARGS, *COMMON, *crit, "--code-dict-size", str(CODE_DICT_SIZE), "--num-bins", str(NUM_BINS),
            "--patch-image-size", str(image_size), "--max-image-size", str(image_size),
            "--batch-size", str(r["batch"]), "--batch-size-valid", str(r.get("batch_valid", 64)),
            "--lr", str(r["lr"]), "--warmup-updates", str(r["warmup"]), "--max-update", str(r["updates"]),
            "--total-num-update", str(r["updates"]), "--validate-interval-updates", str(r["valid_every"]),
            "--save-dir", save_dir, "--no-save-optimizer-state", *[a.format(data=data) for a in r.get("args", [])]]


# --------------------------------------------------------------------------------------------- trainer
class Run:
    """fairseq's training objects for one task, built as ``fairseq_cli.train.main`` builds them."""

    def __init__(self, argv: Sequence[str]):
        import numpy as np
        from fairseq import checkpoint_utils, options, tasks, utils
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from fairseq.trainer import Trainer

        parser = options.get_training_parser()
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=list(argv)))
        cfg.dataset.ignore_unused_valid_subsets = True
        np.random.seed(cfg.common.seed)
        utils.set_torch_seed(cfg.common.seed)
        self.cfg = cfg
        self.task = tasks.setup_task(cfg.task)
        self.task.load_dataset("valid", combine=False, epoch=1)
        model = self.task.build_model(cfg.model)
        self.bare_model = copy.deepcopy(model)  # the bare step's own copy (same weights, own optimizer)
        criterion = self.task.build_criterion(cfg.criterion)
        self.trainer = Trainer(cfg, self.task, model, criterion)
        _, self.epoch_itr = checkpoint_utils.load_checkpoint(cfg.checkpoint, self.trainer)
        self.progress = None
        self.raw_losses: List[torch.Tensor] = []
        self._record_losses()

    def _record_losses(self) -> None:
        """Keep the criterion's unrounded loss of every forward (fairseq's logs round to 3 decimals)."""
        criterion = self.trainer.criterion
        forward = criterion.forward

        def recording(*args, **kwargs):
            out = forward(*args, **kwargs)
            self.raw_losses.append(out[0].detach())
            return out

        criterion.forward = recording

    def checksum(self) -> float:
        """Sum of every trained weight, in float64: equal after equal updates."""
        return float(sum(p.detach().double().sum() for p in self.trainer.model.parameters()))

    def batches(self, n: int) -> List[Dict[str, Any]]:
        """The first ``n`` training batches, in the shuffled order training reads them (on into the next
        epochs when one holds fewer)."""
        out: List[Dict[str, Any]] = []
        while len(out) < n:
            for batch in self.epoch_itr.next_epoch_itr(shuffle=True):
                out.append(batch)
                if len(out) == n:
                    break
        return out

    def loop_body(self, sample) -> Dict[str, Any]:
        """One iteration of ``fairseq_cli.train.train``'s loop over ``[sample]`` (no data loading)."""
        import fairseq_cli.train as fairseq_train
        from fairseq.logging import metrics

        cfg, trainer = self.cfg, self.trainer
        with metrics.aggregate("train_inner"), torch.autograd.profiler.record_function("train_step"):
            log_output = trainer.train_step([sample])
        if log_output is not None:
            num_updates = trainer.get_num_updates()
            if num_updates % cfg.common.log_interval == 0:
                stats = fairseq_train.get_training_stats(metrics.get_smoothed_values("train_inner"))
                self.progress.log(stats, tag="train_inner", step=num_updates)
                metrics.reset_meters("train_inner")
        fairseq_train.validate_and_save(cfg, trainer, self.task, self.epoch_itr,
                                        cfg.dataset.valid_subset.split(","), False)
        return log_output or {}

    def open_progress(self, samples: List[Any]) -> Iterator[Any]:
        """``samples`` through fairseq's progress bar, as the training loop iterates them (its log lines go
        to the logger every ``--log-interval`` updates)."""
        from fairseq.logging import progress_bar

        self.progress = progress_bar.progress_bar(samples, log_format=self.cfg.common.log_format,
                                                  log_interval=self.cfg.common.log_interval, epoch=1,
                                                  default_log_format="simple")
        return iter(self.progress)


def bare_step_fn(run: Run) -> Callable[[Dict[str, Any]], float]:
    """The bare forward + backward + optimizer step on ``run``'s model copy; returns its loss."""
    cfg = run.cfg.optimization
    model = run.bare_model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    betas = run.cfg.optimizer.adam_betas
    betas = tuple(ast.literal_eval(betas) if isinstance(betas, str) else betas)
    opt = torch.optim.AdamW(params, lr=cfg.lr[0], betas=betas, eps=run.cfg.optimizer.adam_eps,
                            weight_decay=run.cfg.optimizer.weight_decay, foreach=True)
    pad = run.task.target_dictionary.pad()

    def step(sample):
        logits = model(**sample["net_input"])[0]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), sample["target"].reshape(-1),
                               ignore_index=pad, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm, foreach=True)
        opt.step()
        return loss.detach()

    return step


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- profile
def profile_updates(run: Run, samples: List[Dict[str, Any]]) -> pstats.Stats:
    """cProfile of the training-loop iterations over ``samples``."""
    prof = cProfile.Profile()
    prof.enable()
    for s in samples:
        run.loop_body(s)
    prof.disable()
    return pstats.Stats(prof)


def named_parts(stats: pstats.Stats, n: int) -> Dict[str, float]:
    """Cumulative seconds per update of each ``PARTS`` entry found in ``stats`` (``n`` updates profiled)."""
    out: Dict[str, float] = {}
    for label, (suffix, name) in PARTS.items():
        total = sum(ct for (path, _, func), (_, _, _, ct, _) in stats.stats.items()
                    if func == name and path.replace(os.sep, "/").endswith(suffix))
        if total:
            out[label] = total / n
    return out


def top_functions(stats: pstats.Stats, n: int, k: int = 12) -> List[Tuple[str, float, int]]:
    """The ``k`` functions with the most own time: ``(where, seconds per update, calls per update)``."""
    rows = []
    for (path, line, func), (_, calls, tt, _, _) in stats.stats.items():
        where = f"{func} ({_short(path)}:{line})" if path != "~" else func
        rows.append((where, tt / n, round(calls / n)))
    return sorted(rows, key=lambda r: -r[1])[:k]


def _short(path: str) -> str:
    parts = path.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])


# ---------------------------------------------------------------------------------------------- ops
# aten ops that launch no kernel on an accelerator (views, metadata, allocation)
NO_KERNEL = {"detach", "view", "_unsafe_view", "expand", "t", "transpose", "permute", "select", "slice",
             "unsqueeze", "squeeze", "as_strided", "alias", "split", "split_with_sizes", "unbind", "_reshape_alias",
             "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "unfold",
             "diagonal", "narrow", "chunk", "set_", "resize_", "is_same_size", "sym_size", "sym_stride"}
# ops that make the host wait for an accelerator: a value read back, or an output size only the data knows
SYNCS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
         "unique_dim", "is_nonzero", "equal", "allclose"}


def _is_sync(name: str, args, kwargs) -> bool:
    """Whether an op would synchronise the host with a device: ``SYNCS``, boolean-mask indexing, and
    ``repeat_interleave`` without ``output_size``."""
    if name in SYNCS:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else ()
        return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())
    if name == "repeat_interleave":
        return len(args) > 0 and torch.is_tensor(args[0]) and (kwargs or {}).get("output_size") is None \
            and (len(args) < 2 or torch.is_tensor(args[1]))
    return False


def _caller(skip: Tuple[str, ...]) -> str:
    """``function (folder/file)`` of the innermost Python frame outside torch and this file."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace(os.sep, "/")
        if not any(part in path for part in skip):
            return f"{frame.f_code.co_name} ({_short(path)})"
        frame = frame.f_back
    return "?"


def _optimizer_step_counter(name: str) -> bool:
    """A ``torch.optim`` optimizer reading its step count: a host tensor even on a GPU (no sync there)."""
    if name != "_local_scalar_dense":
        return False
    frame = sys._getframe(2)
    while frame is not None and "/torch/" in frame.f_code.co_filename.replace(os.sep, "/"):
        if "/torch/optim/" in frame.f_code.co_filename.replace(os.sep, "/"):
            return True
        frame = frame.f_back
    return False


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that would launch kernels, and the would-be host syncs, by Python caller."""

    SKIP = ("/torch/", "bench_update_overhead.py", "/contextlib.py", "/functools.py")

    def __init__(self):
        super().__init__()
        self.kernels: Dict[str, int] = {}
        self.syncs: Dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            where = _caller(self.SKIP)
            self.kernels[where] = self.kernels.get(where, 0) + 1
            if _is_sync(name, args, kwargs) and not _optimizer_step_counter(name):
                key = f"{name} <- {where}"
                self.syncs[key] = self.syncs.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], Any]) -> OpCounter:
    """The ``OpCounter`` of one call of ``fn``."""
    with OpCounter() as counter:
        fn()
    return counter


def op_summary(update: OpCounter, bare: OpCounter, k: int = 10) -> Dict[str, Any]:
    """Kernels and syncs per update and per bare step, and the callers of the most kernels in the update."""
    top = sorted(update.kernels.items(), key=lambda kv: -kv[1])[:k]
    return {"update_kernels": sum(update.kernels.values()), "bare_kernels": sum(bare.kernels.values()),
            "update_syncs": sum(update.syncs.values()), "bare_syncs": sum(bare.syncs.values()),
            "top_kernel_callers": top, "update_sync_sites": sorted(update.syncs.items(), key=lambda kv: -kv[1])}


# -------------------------------------------------------------------------------------------- loader
def loader_rates(run: Run, task: str, work: str, n: int) -> Dict[str, float]:
    """Samples/s one worker builds from the training TSV and from its HDF5 copy (random order), rows/s read."""
    from ofa.data_utils.hdf5 import tsv_to_hdf5
    from ofa.data_utils.readers import open_reader

    tsv = run.task.split_path("train")
    h5 = os.path.join(work, f"{FILES[task]}_train.h5")
    if not os.path.exists(h5):
        tsv_to_hdf5(tsv, h5, run.task.schema)
    cls = run.task.dataset_cls
    out = {}
    for fmt, path in (("tsv", tsv), ("hdf5", h5)):
        reader = open_reader(path, schema=run.task.schema, columns=cls.columns)
        ds = cls(reader, run.task.tokenizer, run.task.data_config(), "train")
        idx = random.Random(0).sample(range(len(reader)), min(n, len(reader)))
        out[f"{fmt}_rows_per_s"] = len(idx) / timed(lambda: [reader.read_row(i) for i in idx])
        items: List[Any] = []
        out[f"{fmt}_samples_per_s"] = len(idx) / timed(lambda: items.extend(ds[i] for i in idx))
        bsz = RECIPE[task]["batch"]
        groups = [items[i:i + bsz] for i in range(0, len(items), bsz)]
        out[f"{fmt}_collate_samples_per_s"] = len(items) / timed(lambda: [ds.collater(g) for g in groups])
    return out


# ---------------------------------------------------------------------------------------------- task
def bench_task(task: str, data: str, args, work: str) -> Dict[str, Any]:
    """Update vs bare-step times, the profile of the overhead and the loader rates of one task."""
    run = Run(train_argv(task, data, args.image_size, os.path.join(work, task, "ckpt")))
    n = WARMUP + args.updates
    samples = run.open_progress(run.batches(n + args.profile + 1))
    bare = bare_step_fn(run)
    update_s, bare_s, checksums = [], [], []
    for i in range(n):  # interleaved, so that machine noise hits both alike
        s = next(samples)
        out: Dict[str, Any] = {}
        t_update = timed(lambda: out.update(run.loop_body(s)))
        t_bare = timed(lambda: bare(s))
        checksums.append(run.checksum())
        if i >= WARMUP:
            update_s.append(t_update)
            bare_s.append(t_bare)
    pairs = [u - b for u, b in zip(update_s, bare_s)]
    result: Dict[str, Any] = {"task": task, "batch": RECIPE[task]["batch"], "updates": args.updates,
                              "update_s": statistics.median(update_s), "bare_s": statistics.median(bare_s),
                              "overhead_s": statistics.median(pairs),
                              "update_min_s": min(update_s), "bare_min_s": min(bare_s),
                              "losses": [float(x) for x in run.raw_losses], "checksums": checksums}
    result["overhead_pct"] = 100.0 * result["overhead_s"] / result["update_s"]
    result["train_samples_per_s"] = result["batch"] / result["update_s"]
    if args.profile:
        stats = profile_updates(run, [next(samples) for _ in range(args.profile)])
        result["parts_s"] = named_parts(stats, args.profile)
        result["top_own_s"] = top_functions(stats, args.profile)
    s = next(samples)
    result["ops"] = op_summary(count_ops(lambda: run.loop_body(s)), count_ops(lambda: bare(s)))
    if not args.no_loader:
        result["loader"] = loader_rates(run, task, work, args.loader_samples)
    return result


def print_task(r: Dict[str, Any]) -> None:
    print(f"\n== {r['task']} (batch {r['batch']}, medians of {r['updates']} updates)")
    print(f"  update {r['update_s']:.4f} s   fwd+bwd+opt {r['bare_s']:.4f} s   overhead {r['overhead_s']:+.4f} s "
          f"({r['overhead_pct']:+.1f}% of the update)   train {r['train_samples_per_s']:.1f} samples/s")
    print(f"  best: update {r['update_min_s']:.4f} s, fwd+bwd+opt {r['bare_min_s']:.4f} s")
    print(f"  losses of the seeded updates: {', '.join(repr(x) for x in r['losses'])}")
    print(f"  weight checksums after them: {', '.join(repr(x) for x in r['checksums'])}")
    if "parts_s" in r:
        print("  cumulative s per update (cProfile; it inflates Python-heavy parts):")
        for label, sec in r["parts_s"].items():
            print(f"    {label:<34s} {sec:8.4f}")
        print("  most own time per update:")
        for where, sec, calls in r["top_own_s"]:
            print(f"    {sec:8.4f} s  {calls:6d} calls  {where[:110]}")
    ops = r["ops"]
    print(f"  aten kernels per update {ops['update_kernels']} (bare step {ops['bare_kernels']}); host syncs a device "
          f"would wait for: {ops['update_syncs']} (bare step {ops['bare_syncs']})")
    print("  callers of the most kernels: " + "; ".join(f"{w} {c}" for w, c in ops["top_kernel_callers"]))
    if ops["update_sync_sites"]:
        print("  sync sites: " + "; ".join(f"{w} x{c}" for w, c in ops["update_sync_sites"]))
    if "loader" in r:
        lo = r["loader"]
        print(f"  loader, 1 worker, random order: TSV {lo['tsv_samples_per_s']:.0f} samples/s "
              f"({lo['tsv_rows_per_s']:.0f} rows/s read, collate {lo['tsv_collate_samples_per_s']:.0f}/s); "
              f"HDF5 {lo['hdf5_samples_per_s']:.0f} samples/s ({lo['hdf5_rows_per_s']:.0f} rows/s read, collate "
              f"{lo['hdf5_collate_samples_per_s']:.0f}/s); training consumes {r['train_samples_per_s']:.1f} samples/s")
        for fmt in ("tsv", "hdf5"):
            ms = 1000 * r["batch"] * (1 / lo[f"{fmt}_samples_per_s"] + 1 / lo[f"{fmt}_collate_samples_per_s"])
            print(f"  one {fmt.upper()} batch takes {ms:.1f} ms to build: {100 * ms / 1000 / r['update_s']:.0f}% of the "
                  f"update, added to it where the loader runs in the training process (--num-workers 0)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma list (default: the main job's tasks)")
    p.add_argument("--updates", type=int, default=12, help="timed updates per task, after 2 warm-up ones (default 12)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the main job's CPU)")
    p.add_argument("--profile", type=int, default=3, help="updates profiled with cProfile (0: none; default 3)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--data", help="an `ofa-synth generate` folder with a `tok` tokenizer (default: a fresh one)")
    p.add_argument("--num-images", type=int, default=200, help="benchmark size when generated (default 200)")
    p.add_argument("--image-size", type=int, default=64, help="image side, as the main job (default 64)")
    p.add_argument("--loader-samples", type=int, default=200, help="samples the loader builds per format")
    p.add_argument("--no-loader", action="store_true", help="skip the loader rates")
    args = p.parse_args(argv)
    from ofa.cli.common import quiet, setup

    setup()
    quiet()
    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ofa-overhead-") as work:
        data = args.data or make_data(args.num_images, args.image_size, work)
        print(f"data {data}; torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
        results = []
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            if task not in RECIPE:
                raise SystemExit(f"unknown task {task!r}; the main job trains {', '.join(RECIPE)}")
            results.append(bench_task(task, data, args, work))
            print_task(results[-1])
    print(f"\n{'task':<16} {'update s':>9} {'fwd+bwd+opt s':>14} {'overhead':>9} {'%':>6} {'train/s':>8} "
          f"{'TSV/s':>7} {'HDF5/s':>7}")
    for r in results:
        lo = r.get("loader", {})
        print(f"{r['task']:<16} {r['update_s']:9.4f} {r['bare_s']:14.4f} {r['overhead_s']:+9.4f} "
              f"{r['overhead_pct']:+6.1f} {r['train_samples_per_s']:8.1f} {lo.get('tsv_samples_per_s', float('nan')):7.0f} "
              f"{lo.get('hdf5_samples_per_s', float('nan')):7.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
