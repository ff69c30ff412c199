"""Converters from the formats users hold to the official OFA TSV files (docs/tasks.md 1.1).

``CONVERTERS`` maps a source kind to its ``convert(out, ...)`` function, which writes the TSV atomically and
returns the number of rows written (an ``int`` carrying ``skipped_rows`` and ``bad_images``; converters that
leave records out by rule also carry ``dropped``, {what: count}). ``main(argv)`` is the ``ofa-data convert
SOURCE_KIND --out OUT.tsv ...`` command line, which prints those counts.

Common behaviour: images are base64 of the original file bytes (never re-encoded) and must decode (unless
``--no-verify-images``); a missing or corrupt image raises ``DataError`` naming the source file, the record and
the image path, or with ``--skip-bad`` drops the record and is counted. Tabs and line breaks in text become
spaces. Every bad input raises ``DataError`` naming the file, the record (``row N``, 1-based, of a JSON list;
``line N`` of a JSONL file) and the field, before the output file exists (it is written atomically).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

from ofa.data_utils.cli import ArgumentParser
from ofa.data_utils.errors import DataError
from ofa.errors import unknown_name
from ofa.data_utils.converters import (
    coco_caption,
    coco_detection,
    image_folder,
    refcoco,
    region_caption_refcoco,
    region_caption_vg,
    snli_ve,
    vqa,
)
from ofa.data_utils.converters._common import ConvertResult, add_common_arguments

_MODULES = {m.NAME: m for m in (coco_caption, refcoco, vqa, image_folder, snli_ve, coco_detection,
                                 region_caption_refcoco, region_caption_vg)}
CONVERTERS: Dict[str, Callable[..., ConvertResult]] = {name: m.convert for name, m in _MODULES.items()}

__all__ = ["CONVERTERS", "ConvertResult", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="ofa-data convert",
        description="Write an official-format OFA TSV file from a source dataset layout.")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE_KIND", required=True)
    for name, module in _MODULES.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_common_arguments(p)
        module.add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """``ofa-data convert SOURCE_KIND --out OUT.tsv [source-specific args]``; returns the exit status.

    Bad input raises ``DataError`` naming the file, the record and the field (``ofa-data`` prints it as one
    line and exits with 2); the output file is written atomically, so nothing of it exists then.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:  # tolerate being handed the sub-command word itself
        argv = argv[1:]
    if argv and not argv[0].startswith("-") and argv[0] not in _MODULES:
        raise DataError(unknown_name("source kind", argv[0], _MODULES))
    args = build_parser().parse_args(argv)
    result = _MODULES[args.source].run(args)
    print(f"wrote {int(result)} rows to {result.out}")
    for path in getattr(result, "extra_files", ()):
        print(f"wrote {path}")
    for what, count in getattr(result, "dropped", {}).items():
        if count:
            print(f"left out {count} {what}")
    if args.skip_bad:
        print(f"skipped {result.skipped_rows} rows with a missing or corrupt image "
              f"({result.bad_images} distinct image files)")
    return 0
