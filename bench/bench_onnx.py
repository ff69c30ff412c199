"""Latency of the ONNX runtime (``ofa_runtime``: onnxruntime + numpy beam search) beside PyTorch's
``SequenceGenerator`` on the same seeded weights, after checking that they decode the same tokens.

Prints numbers (and writes JSON with ``--out``); it is not a test. From the repository root:

    .venv/bin/python bench/bench_onnx.py --arch ofa_tiny --out bench/results/onnx_latency_cpu_ofa_tiny.json

Per configuration (batch size, mode): the median seconds of one ``generate`` call (encoder + beam search) in
each runtime, interleaved, and their ratio. Modes: ``free`` (beam 5, exactly ``--gen-len`` tokens: EOS is
banned before), ``bins`` (beam 5, four ``<bin>`` tokens, grounding), ``trie`` (beam 5 over a
``--answers``-answer trie, VQA). The vocabulary is a synthetic one of the official size (59,457 entries),
so no tokenizer files are needed. ``--threads`` sets torch's and onnxruntime's intra-op threads.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from ofa.export import export_onnx
from ofa.generate import SequenceGenerator, Trie
from ofa.model import OFAModel, config_for_arch

SRC_LEN = 12
NUM_BINS, NUM_CODES = 1000, 8192


def official_size_dictionary():
    """A dictionary laid out like the official one (``ofa.tokenizer.build_dictionary`` over a ``dict.txt`` of
    50,260 placeholder symbols: 4 specials, the text entries, ``<mask>``, 8,192 codes, 1,000 bins; 59,457)."""
    from ofa.tokenizer import build_dictionary

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dict.txt")
        with open(path, "w") as f:
            f.write("".join(f"w{i} 1\n" for i in range(50260)))
        return build_dictionary(path, NUM_CODES, NUM_BINS)


def random_trie(d, n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    seqs = sorted({tuple([d.bos(), *g.integers(4, 50000, size=int(g.integers(1, 4))).tolist(), d.eos()])
                   for _ in range(n)})
    trie = Trie(d.eos())
    for s in seqs:
        trie.insert(s)
    return trie, [list(s) for s in seqs]


def inputs(batch: int, image_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 50000, (batch, SRC_LEN), generator=g)
    src[:, 0], src[:, -1] = 0, 2
    return src, torch.randn(batch, 3, image_size, image_size, generator=g)


def settings_for(mode: str, args, d, trie_seqs):
    if mode == "free":
        return dict(beam_size=args.beam, max_len_b=args.gen_len, min_len=args.gen_len), {}
    if mode == "bins":
        return dict(beam_size=args.beam, max_len_b=4, min_len=4), {"constraint_range": f"{len(d) - NUM_BINS},{len(d)}"}
    return dict(beam_size=args.beam, max_len_b=8, normalize_scores=False), {"constraint_trie": trie_seqs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="ofa_tiny")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--modes", default="free,bins,trie")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--gen-len", type=int, default=16)
    p.add_argument("--answers", type=int, default=3129)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from ofa_runtime import BeamSearch, OnnxModel

    torch.set_num_threads(args.threads)
    d = official_size_dictionary()
    torch.manual_seed(0)
    model = OFAModel.from_config(config_for_arch(args.arch), d).eval()
    trie, trie_seqs = random_trie(d, args.answers)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_onnx(model, os.path.join(tmp, "export"), tokenizer_dir=tmp, image_size=args.image_size, dictionary=d)
        export_s = time.perf_counter() - t0
        onnx_model = OnnxModel(os.path.join(tmp, "export"), threads=args.threads)
        rows = []
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            src, img = inputs(batch, args.image_size)
            sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((batch,), SRC_LEN),
                                    "patch_images": img}}
            for mode in args.modes.split(","):
                common, extra = settings_for(mode, args, d, trie_seqs)
                torch_extra = dict(extra)
                if mode == "trie":
                    torch_extra["constraint_trie"] = trie
                gen = SequenceGenerator(model, d, **common, **torch_extra)
                search = BeamSearch(onnx_model, **common, **extra)
                with torch.no_grad():
                    ref = gen.generate([model], sample)
                got = search.generate(src.numpy(), img.numpy())
                same = all([h["tokens"].tolist() for h in r] == [h["tokens"].tolist() for h in o]
                           for r, o in zip(ref, got))
                times = {"torch": [], "onnx": []}
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    with torch.no_grad():
                        gen.generate([model], sample)
                    times["torch"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    search.generate(src.numpy(), img.numpy())
                    times["onnx"].append(time.perf_counter() - t)
                row = {"batch": batch, "mode": mode, "tokens_equal": same,
                       "torch_s": statistics.median(times["torch"]), "onnx_s": statistics.median(times["onnx"])}
                row["ratio"] = row["torch_s"] / row["onnx_s"]
                rows.append(row)
                print(f"{args.arch} B={batch:<2} {mode:<5} torch {row['torch_s']:.3f} s  onnx {row['onnx_s']:.3f} s  "
                      f"torch/onnx {row['ratio']:.2f}x  tokens equal: {same}", flush=True)
    result = {"command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])), "arch": args.arch,
              "image_size": args.image_size, "beam": args.beam, "gen_len": args.gen_len, "answers": args.answers,
              "threads": args.threads, "export_s": export_s, "torch": torch.__version__,
              "onnxruntime": __import__("onnxruntime").__version__, "machine": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
