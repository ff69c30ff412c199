"""``ofa-data synth OUT_DIR``: write the embedded benchmark (see the package docstring)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .records import SynthConfig
from .splits import check_fractions
from .writer import generate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ofa-data synth",
        description="Generate a synthetic multi-task benchmark (captioning, grounding, VQA, visual entailment, "
                    "image classification, text corpus) in the official OFA TSV formats: train, valid, an "
                    "i.i.d. test split and a compositional split (comp).")
    p.add_argument("out_dir", help="folder to write (created if missing; files in it are replaced)")
    p.add_argument("--num-images", type=int, default=1000, help="number of images over all splits (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default 0)")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--valid-frac", type=float, default=0.1, help="fraction of images in valid (default 0.1)")
    p.add_argument("--test-frac", type=float, default=0.1, help="fraction of images in test (default 0.1)")
    p.add_argument("--comp-frac", type=float, default=0.1,
                   help="fraction of images in the compositional split comp (default 0.1)")
    p.add_argument("--held-out", type=int, default=4,
                   help="number of (colour, shape) pairs kept out of train/valid (1-4, default 4)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1); output is identical")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_images < 1 or args.image_size < 32 or not 1 <= args.held_out <= 4 or args.workers < 1:
        build_parser().error("need --num-images >= 1, --image-size >= 32, --held-out in 1..4, --workers >= 1")
    try:
        check_fractions(args.valid_frac, args.test_frac, args.comp_frac)
    except ValueError as e:
        build_parser().error(f"--valid-frac/--test-frac/--comp-frac: {e}")
    cfg = SynthConfig(seed=args.seed, num_images=args.num_images, image_size=args.image_size,
                      valid_frac=args.valid_frac, test_frac=args.test_frac, comp_frac=args.comp_frac)

    def progress(n, seconds):
        print(f"  {n}/{args.num_images} images, {n / seconds:.1f} images/s", file=sys.stderr, flush=True)

    m = generate(args.out_dir, cfg, num_held_out=args.held_out, workers=args.workers,
                 progress=None if args.quiet else progress)
    if not args.quiet:
        split = ", ".join(f"{k} {v}" for k, v in m["images_per_split"].items())
        print(f"wrote {m['num_images']} images ({split}) to {args.out_dir} in {m['generation_seconds']:.2f} s "
              f"({m['images_per_second']:.1f} images/s, {args.workers} worker(s))")
        print("held-out (colour, shape) pairs: " + ", ".join(" ".join(c) for c in m["held_out_combos"]))
        for name, rows in m["files"].items():
            print(f"  {name:28s} {rows:>9d}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
