"""Benchmark OFA: training step time and beam-search generation speed (cached vs. recomputed prefix).

Prints numbers; it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_model.py --archs ofa_tiny ofa_base --bpe-dir path/to/ofa_bpe

Options: --bpe-dir (the GPT-2 BPE folder: dict.txt, encoder.json, vocab.bpe; default $OFA_BPE_DIR),
--batch-size, --image-size, --train-steps, --gen-len, --gen-batch, --gen-repeats, --beam, --threads, --json PATH.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ofa.checkpoint import build_model_for_arch
from ofa.generate import SequenceGenerator

SRC_LEN, TGT_LEN, VOCAB_HI = 16, 12, 50000


def make_inputs(batch: int, image_size: int):
    src = torch.cat([torch.zeros(batch, 1, dtype=torch.long),
                     torch.randint(4, VOCAB_HI, (batch, SRC_LEN - 2)),
                     torch.full((batch, 1), 2, dtype=torch.long)], dim=1)
    return {
        "src_tokens": src,
        "src_lengths": torch.full((batch,), SRC_LEN, dtype=torch.long),
        "patch_images": torch.randn(batch, 3, image_size, image_size),
        "patch_masks": torch.ones(batch, dtype=torch.bool),
    }


def bench_train(model, args):
    """Median seconds of one forward+backward step (after 1 warm-up step)."""
    model.train()
    net = make_inputs(args.batch_size, args.image_size)
    prev = torch.cat([torch.zeros(args.batch_size, 1, dtype=torch.long),
                      torch.randint(4, VOCAB_HI, (args.batch_size, TGT_LEN - 1))], dim=1)
    target = torch.randint(4, VOCAB_HI, (args.batch_size, TGT_LEN))
    times = []
    for i in range(1 + args.train_steps):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        logits = model(net["src_tokens"], net["src_lengths"], prev,
                       patch_images=net["patch_images"], patch_masks=net["patch_masks"])[0]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1))
        loss.backward()
        if i > 0:
            times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    step = statistics.median(times)
    return step, args.batch_size / step


def bench_generate(model, dictionary, args):
    """Tokens/s of beam search with and without the key/value cache (best of --gen-repeats runs, modes
    alternated, after a short warm-up), and whether the top hypotheses agree."""
    model.eval()
    sample = {"net_input": make_inputs(args.gen_batch, args.image_size)}
    n = args.gen_len
    gens = {c: SequenceGenerator([model], dictionary, beam_size=args.beam, max_len_a=0, max_len_b=n,
                                 min_len=n, use_cache=c) for c in (True, False)}
    secs, tops = {True: [], False: []}, {}
    with torch.no_grad():
        SequenceGenerator([model], dictionary, beam_size=args.beam, max_len_a=0, max_len_b=2,
                          min_len=2).generate([model], sample)  # warm-up
        for _ in range(args.gen_repeats):
            for use_cache, gen in gens.items():
                t0 = time.perf_counter()
                hyps = gen.generate([model], sample)
                secs[use_cache].append(time.perf_counter() - t0)
                tops[use_cache] = [h[0]["tokens"].tolist() for h in hyps]
    n_tok = sum(len(t) - 1 for t in tops[True])  # best hypothesis per sample, EOS not counted
    out = {c: (n_tok / min(secs[c]), min(secs[c]), n_tok) for c in (True, False)}
    same = tops[True] == tops[False]
    if not same:
        for i, (a, b) in enumerate(zip(tops[True], tops[False])):
            if a != b:
                print(f"  sample {i}: cached    {a}\n  sample {i}: recompute {b}")
    return out[True], out[False], same


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["ofa_tiny", "ofa_base"])
    p.add_argument("--bpe-dir", default=os.environ.get("OFA_BPE_DIR"), help="GPT-2 BPE folder (default $OFA_BPE_DIR)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=2, help="timed steps after 1 warm-up")
    p.add_argument("--gen-len", type=int, default=20)
    p.add_argument("--gen-batch", type=int, default=1)
    p.add_argument("--gen-repeats", type=int, default=1, help="timed runs per mode; the fastest is kept")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()

    if not args.bpe_dir:
        sys.exit("error: pass --bpe-dir DIR (dict.txt, encoder.json, vocab.bpe) or set OFA_BPE_DIR")
    bpe_dir = os.path.normpath(args.bpe_dir)
    if not os.path.isdir(bpe_dir):
        sys.exit(f"error: BPE folder not found: {bpe_dir} (pass --bpe-dir DIR with dict.txt, encoder.json, vocab.bpe)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, batch={args.batch_size}, "
          f"image={args.image_size}, gen_batch={args.gen_batch}, beam={args.beam}, gen_len={args.gen_len}")

    rows = []
    for arch in args.archs:
        torch.manual_seed(args.seed)
        model, dictionary = build_model_for_arch(arch, bpe_dir=bpe_dir)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"\n[{arch}] {n_params / 1e6:.1f}M params")
        step, sps = bench_train(model, args)
        print(f"  train: {step:.3f} s/step, {sps:.2f} samples/s")
        (tc, sc, nt), (tr, sr, _), same = bench_generate(model, dictionary, args)
        print(f"  generate: cached {tc:.1f} tok/s ({sc:.2f} s), recompute {tr:.1f} tok/s ({sr:.2f} s), "
              f"{nt} tokens, speed-up {tc / tr:.2f}x")
        print(f"  top hypotheses identical (cached vs recompute): {same}")
        rows.append(dict(arch=arch, params_m=round(n_params / 1e6, 1), step_s=step, train_samples_s=sps,
                         gen_tok_s_cached=tc, gen_tok_s_recompute=tr, speedup=tc / tr, same_hypotheses=same,
                         threads=torch.get_num_threads(), batch_size=args.batch_size,
                         image_size=args.image_size, gen_batch=args.gen_batch, gen_len=args.gen_len,
                         beam=args.beam))
        del model

    head = f"{'arch':<10} {'step s':>8} {'train smp/s':>12} {'gen tok/s cached':>17} " \
           f"{'gen tok/s recompute':>20} {'speedup':>8} {'same':>5}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['arch']:<10} {r['step_s']:>8.3f} {r['train_samples_s']:>12.2f} {r['gen_tok_s_cached']:>17.1f} "
              f"{r['gen_tok_s_recompute']:>20.1f} {r['speedup']:>7.2f}x {str(r['same_hypotheses']):>5}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
