"""Where the project's model spends one part of ``bench/compare_official.py``'s workload: a torch.profiler table.

The same seeded model, batch and decoding settings as ``compare_official`` (its ``make_batch``,
``answer_sequences`` and loss), the project side only, so no official checkout is needed:

    .venv/bin/python -m experiments.profile_parts --part beam [--arch ofa_tiny] [--shapes] [--rows 30]

``--part``: ``eval`` (teacher-forced forward, no grad), ``beam`` (beam 5, exactly ``--tgt-len`` tokens),
``trie`` (beam 5 under a 3,129-answer trie with the question forced as prompt), ``train`` (forward, label-smoothed
loss, backward, fairseq's Adam as the project's commands run it). Prints the median of ``--repeats`` timed calls
(after two warm-up calls) and the profiler's ops by own CPU time (``--shapes``: grouped by input shapes).
``OFA_ONEDNN=0`` in the environment profiles the plain kernels for a comparison.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from ofa.checkpoint import build_model_for_arch
from ofa.generate import SequenceGenerator, Trie
from ofa.model.init import seeded_weights

PARTS = ("eval", "beam", "trie", "train")


def _compare_official():
    """``bench/compare_official.py`` as a module (``bench`` is not a package; ``sys.path`` is left alone)."""
    name = "ofa_bench_compare_official"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "bench" / "compare_official.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def build_call(part: str, arch: str, bpe_dir: Optional[str], batch_size: int, image_size: int,
               tgt_len: int) -> Callable[[], object]:
    """A no-argument function running ``part`` once on the seeded project model."""
    co = _compare_official()
    cfg = co.BenchConfig(official="", bpe_dir=bpe_dir, arch=arch, batch_size=batch_size, image_size=image_size,
                         tgt_len=tgt_len)
    torch.manual_seed(cfg.seed)
    model, dictionary = build_model_for_arch(arch, bpe_dir=bpe_dir)
    seeded_weights(model, cfg.seed).eval()
    batch = co.make_batch(cfg, dictionary)
    side = co.Side("project", model, None, Trie)
    if part == "eval":
        def call():
            with torch.no_grad():
                return side.forward(batch)
    elif part == "beam":
        generator = SequenceGenerator([model], dictionary, beam_size=cfg.beam, max_len_a=0, max_len_b=tgt_len,
                                      min_len=tgt_len)

        def call():
            return side.generate(generator, batch, False)
    elif part == "trie":
        trie = side.trie(co.answer_sequences(cfg, dictionary), dictionary.eos())
        generator = SequenceGenerator([model], dictionary, beam_size=cfg.beam, max_len_a=0,
                                      max_len_b=cfg.src_len + co.MAX_ANSWER_TOKENS + 2, min_len=1,
                                      constraint_trie=trie)

        def call():
            return side.generate(generator, batch, True)
    elif part == "train":
        from fairseq.optim.adam import Adam

        model.train()
        optimizer = Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        step = co.adam_step(side, optimizer)  # the fused kernel, as ofa-train's --optimizer adam

        def call():
            optimizer.zero_grad(set_to_none=True)
            loss = co.label_smoothed_nll(side.forward(batch), batch.target, cfg.label_smoothing, dictionary.pad())
            loss.backward()
            step(optimizer)
            return loss
    else:
        raise ValueError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    return call


def profile(call: Callable[[], object], repeats: int, shapes: bool, rows: int) -> str:
    """Median seconds of ``repeats`` calls after two warm-up calls, then the profiler table of one more."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    call(), call()
    seconds: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
        call()
    table = prof.key_averages(group_by_input_shape=shapes).table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"median {statistics.median(seconds):.3f} s over {repeats} calls ({', '.join(f'{s:.3f}' for s in seconds)})\n{table}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="profile_parts", description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=PARTS, required=True)
    p.add_argument("--arch", default="ofa_tiny")
    p.add_argument("--bpe-dir", default=None, help="GPT-2 BPE folder with dict.txt (default $OFA_BPE_DIR)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--tgt-len", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", type=int, default=30, help="profiler rows printed")
    p.add_argument("--shapes", action="store_true", help="group the profiler rows by input shapes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bpe_dir = args.bpe_dir or _compare_official().default_bpe_dir()
    if not bpe_dir:
        p.error("give --bpe-dir (the GPT-2 BPE folder with dict.txt) or set OFA_BPE_DIR")
    call = build_call(args.part, args.arch, bpe_dir, args.batch_size, args.image_size, args.tgt_len)
    print(f"{args.part}, {args.arch}, batch {args.batch_size}, {args.image_size} px, {args.threads} threads")
    print(profile(call, args.repeats, args.shapes, args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
