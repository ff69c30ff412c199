"""``ofa-data``: prepare and check data in the official OFA formats.

    ofa-data convert SOURCE --out FILE.tsv [...]              COCO / RefCOCO / VQA / ImageNet folder / SNLI-VE
    ofa-data validate FILE [FILE ...] --task T                report every bad row and field
    ofa-data hdf5 SRC DST [--schema S]                        TSV <-> HDF5, lossless
    ofa-data cider-df CAPTIONS.tsv --out WORDS.p              CIDEr-D document frequencies for SCST

The embedded benchmark's data (scenes, text, pretraining sources) comes from ``ofa-synth``.
"""
from __future__ import annotations

import argparse
import sys


def _hdf5(argv) -> int:
    from ofa.data_utils.hdf5 import convert

    parser = argparse.ArgumentParser(prog="ofa-data hdf5", description="convert TSV <-> HDF5 (by DST's extension)")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--schema", help="layout of a TSV source: caption, refcoco, vqa, snli_ve, image_classify, ...")
    args = parser.parse_args(argv)
    n = convert(args.src, args.dst, args.schema)
    print(f"wrote {n} rows to {args.dst}")
    return 0


def _convert(argv) -> int:
    from ofa.data_utils.converters import main

    return main(argv) or 0


def _cider_df(argv) -> int:
    from ofa.data_utils.cider_df import main

    return main(argv)


def _validate(argv) -> int:
    from ofa.data_utils.validate import main

    return main(argv)


COMMANDS = {"convert": _convert, "validate": _validate, "hdf5": _hdf5, "cider-df": _cider_df}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from ofa.data_utils.errors import DataError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
