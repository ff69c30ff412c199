"""Benchmark image-code generation: seconds to decode N ``<code_i>`` tokens (text-to-image) with the
key/value cache, the decoder's longest generation (1,024 codes for a 256 px image at factor 8).

Prints numbers; it is not a test. Run from the repository root:

    .venv/bin/python bench/bench_code_generation.py --arch ofa_tiny --codes 256 1024

Randomly initialised weights and a dummy OFA-layout vocabulary (40 text symbols, 8,192 codes, 1,000
bins): the speed does not depend on what the weights say. Greedy decoding restricted to the code range.
"""
from __future__ import annotations

import argparse
import time

import torch

from ofa.generate import SequenceGenerator
from ofa.model import OFAModel, config_for_arch


def dummy_dictionary(num_text: int = 40, codes: int = 8192, bins: int = 1000):
    from fairseq.data import Dictionary

    d = Dictionary()
    for symbol in [f"w{i}" for i in range(num_text)] + ["<mask>"] + [f"<code_{i}>" for i in range(codes)] + \
            [f"<bin_{i}>" for i in range(bins)]:
        d.add_symbol(symbol)
    return d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="ofa_tiny")
    p.add_argument("--codes", type=int, nargs="+", default=[256, 1024], help="code counts to generate")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = dummy_dictionary()
    model = OFAModel.from_config(config_for_arch(args.arch), d).eval()
    src = torch.randint(4, 44, (1, 12))
    src[:, 0], src[:, -1] = d.bos(), d.eos()
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([12]),
                            "patch_images": torch.zeros(1, 3, 256, 256), "patch_masks": torch.zeros(1, dtype=torch.bool),
                            "code_masks": torch.ones(1, dtype=torch.bool)}}
    code_range = f"{d.index('<code_0>')},{d.index('<bin_0>')}"
    with torch.no_grad():
        for n in args.codes:
            gen = SequenceGenerator([model], d, beam_size=1, max_len_a=0, max_len_b=n, min_len=n, gen_code=True,
                                    constraint_range=code_range)
            gen.generate([model], sample)  # warm-up
            t0 = time.perf_counter()
            gen.generate([model], sample)
            s = time.perf_counter() - t0
            print(f"{args.arch}  {n:5d} codes  {s:7.2f} s  {n / s:7.1f} codes/s")


if __name__ == "__main__":
    main()
