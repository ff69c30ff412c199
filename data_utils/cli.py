"""``ofa-data``: prepare and check data in the official OFA formats.

    ofa-data synth OUT_DIR [--num-images N] [--seed S]      embedded multi-task benchmark
    ofa-data synth-text OUT_DIR [--num N] [--seed S]         embedded text-only data (summaries, GLUE-style, corpus)
    ofa-data synth-pretrain OUT_DIR [--vqgan DIR] [...]      embedded pretraining sources (V-L, text, detection, image codes)
    ofa-data synth-image-gen OUT_DIR --vqgan DIR [...]        embedded text-to-image data (image_gen TSVs of scene codes)
    ofa-data convert SOURCE --out FILE.tsv [...]              COCO / RefCOCO / VQA / ImageNet folder / SNLI-VE
    ofa-data validate FILE [FILE ...] --task T                report every bad row and field
    ofa-data hdf5 SRC DST [--schema S]                        TSV <-> HDF5, lossless
    ofa-data cider-df CAPTIONS.tsv --out WORDS.p              CIDEr-D document frequencies for SCST
"""
from __future__ import annotations

import argparse
import sys


def _hdf5(argv) -> int:
    from .hdf5 import convert

    parser = argparse.ArgumentParser(prog="ofa-data hdf5", description="convert TSV <-> HDF5 (by DST's extension)")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--schema", help="layout of a TSV source: caption, refcoco, vqa, snli_ve, image_classify, ...")
    args = parser.parse_args(argv)
    n = convert(args.src, args.dst, args.schema)
    print(f"wrote {n} rows to {args.dst}")
    return 0


def _synth(argv) -> int:
    from .synth import main

    return main(argv) or 0


def _synth_text(argv) -> int:
    from .synth_text import main

    return main(argv) or 0


def _synth_pretrain(argv) -> int:
    from .synth_pretrain import main

    return main(argv) or 0


def _synth_image_gen(argv) -> int:
    from .synth_image_gen import main

    return main(argv) or 0


def _convert(argv) -> int:
    from .converters import main

    return main(argv) or 0


def _cider_df(argv) -> int:
    from .cider_df import main

    return main(argv)


def _validate(argv) -> int:
    from .validate import main

    return main(argv)


COMMANDS = {"synth": _synth, "synth-text": _synth_text, "synth-pretrain": _synth_pretrain,
            "synth-image-gen": _synth_image_gen, "convert": _convert, "validate": _validate, "hdf5": _hdf5,
            "cider-df": _cider_df}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from .errors import DataError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
