"""``ofa-data``: prepare and check data in the official OFA formats.

    ofa-data convert SOURCE --out FILE.tsv [...]              COCO / RefCOCO / VQA / ImageNet folder / SNLI-VE
    ofa-data validate FILE [FILE ...] --task T                report every bad row and field
    ofa-data hdf5 SRC DST [--schema S]                        TSV <-> HDF5, lossless
    ofa-data cider-df CAPTIONS.tsv --out WORDS.p              CIDEr-D document frequencies for SCST

A mistake in what was given (a missing file, an unknown command, task or layout, a bad option, a bad record
in a converter's input) ends in one line ``ofa-data: error: ...`` and exit status 2 (``--verbose`` shows the
traceback); ``validate`` reports every bad row and exits with 1 when it found any.

The embedded benchmark's data (scenes, text, pretraining sources) comes from ``ofa-synth``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

from ofa.console import run_cli
from ofa.data_utils.errors import DataError
from ofa.errors import unknown_name


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the ``ofa-data`` commands: a bad argument is a ``ConfigError`` (one line from ``run_cli``,
    ``ofa-data: error: validate: the following arguments are required: --task (ofa-data validate --help)``),
    not a usage block."""

    def error(self, message: str):
        from ofa.errors import ConfigError

        command = self.prog[len("ofa-data "):] if self.prog.startswith("ofa-data ") else self.prog
        raise ConfigError(f"{command}: {message} ({self.prog} --help)")


def _hdf5(argv) -> int:
    from ofa.data_utils.formats import SCHEMAS
    from ofa.data_utils.hdf5 import convert

    parser = ArgumentParser(prog="ofa-data hdf5", description="convert TSV <-> HDF5 (by DST's extension)")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--schema", help=f"layout of a TSV source: {', '.join(sorted(SCHEMAS))}")
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


COMMANDS: Dict[str, Callable[[List[str]], int]] = {"convert": _convert, "validate": _validate, "hdf5": _hdf5,
                                                  "cider-df": _cider_df}


def command(argv: List[str]) -> int:
    """``ofa-data COMMAND ...`` without the error handling (``main`` adds it): the command's exit status."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if not argv:
        raise DataError(f"give a command: {', '.join(COMMANDS)} (ofa-data --help)")
    if argv[0] not in COMMANDS:
        raise DataError(unknown_name("command", argv[0], COMMANDS))
    return COMMANDS[argv[0]](argv[1:])


def main(argv: Optional[List[str]] = None) -> int:
    """The ``ofa-data`` console script: mistakes end in ``ofa-data: error: ...`` and exit status 2."""
    return run_cli("ofa-data", command, argv)


if __name__ == "__main__":
    sys.exit(main())
