"""``ofa-data validate FILE --task T``: check every field of every row of an official-format file.

Every field of every layout (``formats.SCHEMAS``) is checked as the datasets read it, so a file that passes
trains and evaluates without a ``DataError``:

- text: UTF-8 (a bad byte is reported with its line and field, and the next rows are still read); the
  fields a task needs are not empty (``REQUIRED``);
- images: base64 that decodes to an image under the pixel limit (truncated data, undecodable bytes and
  decompression bombs are caught);
- numbers: finite (no ``nan`` / ``inf``) and in range: boxes ``x0 < x1``, ``y0 < y1`` and inside the
  image (``region_coord``, grounding ``refs``, detection ``boxes``); VQA answer confidences in [0, 1];
  class indices positive integers; category ids non-negative integers; image codes non-negative
  integers below ``--code-vocab-size`` that fill a square code grid;
- labels: entailment labels, pretraining row types.

Every problem is reported as ``FILE, line N, field 'F': WHAT`` (HDF5 shards: ``row N``, 1-based); the exit
status is 1 when any row is bad, 2 for a mistake in the command itself (a missing file, an unknown task).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from ofa.data_utils.cli import ArgumentParser
from ofa.data_utils.codes import CodeError, code_grid, parse_codes
from ofa.data_utils.datasets import SNLI_LABELS
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import (
    SCHEMAS,
    Schema,
    box_inside,
    get_schema,
    parse_answers,
    parse_box,
    parse_detection_boxes,
    parse_index,
)
from ofa.data_utils.images import MAX_PIXELS, b64_to_bytes, decode_bytes
from ofa.data_utils.readers import locate, open_reader
from ofa.data_utils.unify_dataset import VL_TYPES

CODE_VOCAB_SIZE = 8192  # the official VQGAN codebook

# the fields each layout's rows must fill (pretrain_vl: more by row type, ``_check_vl_type``)
REQUIRED: Dict[str, Tuple[str, ...]] = {
    "caption": ("uniq_id", "caption"),
    "refcoco": ("uniq_id", "text"),
    "vqa": ("question_id", "question"),
    "snli_ve": ("uniq_id", "hypothesis", "caption"),
    "image_classify": ("label_name",),
    "image_gen": ("uniq_id", "code", "caption"),
    "pretrain_vl": ("uniq_id", "type"),
    "pretrain_text": ("uniq_id", "text"),
    "pretrain_image": ("uniq_id", "code"),
    "pretrain_detection": ("uniq_id", "boxes"),
    "text_pair": ("uniq_id", "source", "target"),
    "detection": ("uniq_id",),  # an image without objects has an empty boxes field
    "region_caption": ("uniq_id", "caption"),
}
VL_REQUIRED = {"caption": ("caption",), "qa": ("question", "refs"), "visual_grounding": ("caption", "refs")}


@dataclass
class Row:
    """One row being checked: its fields by column, the decoded images' sizes, the options."""

    schema: Schema
    fields: Dict[str, str]
    sizes: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    code_vocab_size: int = CODE_VOCAB_SIZE

    @property
    def image_size(self) -> Optional[Tuple[int, int]]:
        return self.sizes.get("image")


def _check_answers(value: str, row: Row) -> None:
    parse_answers(value)


def _check_region(value: str, row: Row) -> None:
    box = parse_box(value)
    if row.image_size is not None:
        box_inside(box, row.image_size, value)


def _check_label(value: str, row: Row) -> None:
    if value.strip() not in SNLI_LABELS:
        raise DataError(f"label {value!r} is not one of {sorted(SNLI_LABELS)}")


def _check_label_index(value: str, row: Row) -> None:
    parse_index(value, "label index", minimum=1)


def _check_code(value: str, row: Row) -> None:
    """Image codes: non-negative integers (or ``<code_i>`` tokens) below the codebook size whose count fills a
    square code grid."""
    try:
        code_grid(len(parse_codes(value, vocab_size=row.code_vocab_size)))
    except CodeError as e:
        raise DataError(str(e)) from None


def _check_detection(value: str, row: Row) -> None:
    parse_detection_boxes(value, size=row.image_size)


def _check_vl_type(value: str, row: Row) -> None:
    """A pretrain_vl row's ``type``; the fields that type needs are filled, its ``refs`` parse."""
    kind = value.strip()
    if kind not in VL_TYPES:
        raise DataError(f"type {kind!r} is not one of {list(VL_TYPES)}")
    for col in VL_REQUIRED[kind]:
        if not row.fields[col].strip():
            raise DataError(f"empty field (a {kind} row needs it)", field=col)
    refs = row.fields["refs"]
    if kind == "qa":
        parse_answers(refs, "refs")
    elif kind == "visual_grounding":
        box = parse_box(refs, "refs")
        if row.image_size is not None:
            box_inside(box, row.image_size, refs, "refs")


# column -> check, per layout where a column name means different things
CHECKS: Dict[str, Callable[[str, Row], None]] = {
    "answers": _check_answers,
    "region_coord": _check_region,
    "label_index": _check_label_index,
    "code": _check_code,
    "boxes": _check_detection,
}
SCHEMA_CHECKS: Dict[str, Dict[str, Callable[[str, Row], None]]] = {
    "snli_ve": {"label": _check_label},
    "pretrain_vl": {"type": _check_vl_type},
}


def validate_row(schema: Schema, values, max_pixels: Optional[int] = MAX_PIXELS,
                 code_vocab_size: int = CODE_VOCAB_SIZE) -> List[DataError]:
    """All problems of one row (values in file order; images as base64 text or raw bytes)."""
    errors: List[DataError] = []
    row = Row(schema, dict(zip(schema.columns, values)), code_vocab_size=code_vocab_size)
    for col in schema.image_columns:  # first, so that boxes are checked against the image's size
        try:
            value = row.fields[col]
            raw = value if isinstance(value, bytes) else b64_to_bytes(value)
            row.sizes[col] = decode_bytes(raw, max_pixels).size
        except DataError as e:
            errors.append(e.at(field=col))
    required = REQUIRED.get(schema.name, ())
    checks = {**CHECKS, **SCHEMA_CHECKS.get(schema.name, {})}
    for col in schema.columns:
        if col in schema.image_columns:
            continue
        value = row.fields[col]
        try:
            if not str(value).strip():
                if col in required:
                    raise DataError("empty field")
                continue
            if col in checks:
                checks[col](value, row)
        except DataError as e:
            errors.append(e.at(field=col))
    return errors


def validate_file(path: str, task: str, max_pixels: Optional[int] = MAX_PIXELS,
                  code_vocab_size: int = CODE_VOCAB_SIZE) -> Iterator[DataError]:
    """Yield a ``DataError`` for every problem in ``path``, located by ``row`` (0-based) and ``line`` (the
    1-based line of a TSV file; ``None`` for HDF5). A row that cannot be read (bad UTF-8, wrong column
    count) is one problem; the rows after it are still checked."""
    schema = get_schema(task)
    reader = open_reader(path, schema=schema)
    for g in range(reader.total):
        try:
            values = reader.read_fields(g) if hasattr(reader, "read_fields") else reader.read_row(g)
        except DataError as e:
            yield locate(e, reader, g)
            continue
        for e in validate_row(schema, values, max_pixels, code_vocab_size):
            yield locate(e, reader, g)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="ofa-data validate", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="TSV or HDF5 files")
    parser.add_argument("--task", required=True, help=f"data layout: {', '.join(sorted(SCHEMAS))}")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest image accepted (pixels)")
    parser.add_argument("--code-vocab-size", type=int, default=CODE_VOCAB_SIZE,
                        help="image codes must lie in [0, N) (the VQGAN codebook; default 8192)")
    parser.add_argument("--max-report", type=int, default=50, help="print at most this many problems per file")
    return parser


def main(argv=None) -> int:
    """Check every file; prints each problem on stderr and a summary line per file on stdout.

    Returns 0 when every row is good and 1 when any is bad; a mistake in the command (a missing file, an
    unknown task, a bad option) raises ``DataError`` / exits 2 before any file is checked.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in (("--max-pixels", args.max_pixels), ("--code-vocab-size", args.code_vocab_size),
                        ("--max-report", args.max_report)):
        if value < (0 if name == "--max-report" else 1):
            parser.error(f"{name} must be {'non-negative' if name == '--max-report' else 'positive'}, got {value}")
    get_schema(args.task)
    for path in args.files:  # every file is there before any is read
        if not os.path.isfile(path):
            raise DataError("file not found", path)
    bad_total = 0
    for path in args.files:
        rows = set()
        count = 0
        for err in validate_file(path, args.task, args.max_pixels, args.code_vocab_size):
            count += 1
            rows.add(err.row)
            if count <= args.max_report:
                print(err, file=sys.stderr)
        if count > args.max_report:
            print(f"... {count - args.max_report} more problems in {path}", file=sys.stderr)
        status = "OK" if not count else f"{len(rows)} bad rows, {count} problems"
        print(f"{path}: {status}")
        bad_total += count
    return 1 if bad_total else 0


if __name__ == "__main__":
    from ofa.console import run_cli

    sys.exit(run_cli("ofa-data validate", main))
