"""``ofa-data validate FILE --task T``: check every row of an official-format file.

Decodes every image (truncated base64, undecodable bytes and decompression bombs are caught), and
checks the column count, empty required fields, box order and range (inside the image), VQA answer
confidences, entailment labels and class indices. Every problem is reported with its file, row and
field; the exit status is non-zero when any row is bad.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, Iterator, List, Optional

from ofa.data_utils.codes import CodeError, code_grid, parse_codes
from ofa.data_utils.datasets import SNLI_LABELS
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import Schema, get_schema, parse_answers, parse_box
from ofa.data_utils.images import MAX_PIXELS, b64_to_bytes, decode_bytes
from ofa.data_utils.readers import open_reader

REQUIRED = {"uniq_id", "question_id", "caption", "text", "question", "hypothesis", "label_name", "code"}


def _check_answers(value: str, fields: Dict[str, str]) -> None:
    parse_answers(value)


def _check_label(value: str, fields: Dict[str, str]) -> None:
    if value.strip() not in SNLI_LABELS:
        raise DataError(f"label {value!r} is not one of {sorted(SNLI_LABELS)}")


def _check_label_index(value: str, fields: Dict[str, str]) -> None:
    if not value.strip().isdigit() or int(value) < 1:
        raise DataError(f"label index {value!r} is not a positive integer")


def _check_code(value: str, fields: Dict[str, str]) -> None:
    """Image codes: non-negative integers (or ``<code_i>`` tokens) whose count fills a square code grid."""
    try:
        code_grid(len(parse_codes(value)))
    except CodeError as e:
        raise DataError(str(e)) from None


CHECKS: Dict[str, Callable[[str, Dict[str, str]], None]] = {
    "code": _check_code,
    "answers": _check_answers,
    "label": _check_label,
    "label_index": _check_label_index,
}


def validate_row(schema: Schema, values, max_pixels: Optional[int] = MAX_PIXELS) -> List[DataError]:
    """All problems of one row (values in file order)."""
    errors: List[DataError] = []
    fields = dict(zip(schema.columns, values))
    sizes = {}
    for col in schema.columns:
        value = fields[col]
        try:
            if col in schema.image_columns:
                raw = value if isinstance(value, bytes) else b64_to_bytes(value)
                sizes[col] = decode_bytes(raw, max_pixels).size
            elif col in REQUIRED and not str(value).strip():
                raise DataError("empty field")
            elif col in CHECKS:
                CHECKS[col](value, fields)
        except DataError as e:
            errors.append(e.at(field=col))
    if "region_coord" in fields:
        try:
            x0, y0, x1, y1 = parse_box(fields["region_coord"])
            if "image" in sizes:
                w, h = sizes["image"]
                if x0 < 0 or y0 < 0 or x1 > w + 1 or y1 > h + 1 or x1 <= x0 or y1 <= y0:
                    raise DataError(f"box {fields['region_coord']} is empty or outside the {w}x{h} image")
        except DataError as e:
            errors.append(e.at(field="region_coord"))
    return errors


def validate_file(path: str, task: str, max_pixels: Optional[int] = MAX_PIXELS) -> Iterator[DataError]:
    """Yield a ``DataError`` for every problem in ``path`` (rows numbered from 0)."""
    schema = get_schema(task)
    reader = open_reader(path, schema=schema)
    for g in range(reader.total):
        try:
            values = reader.read_fields(g) if hasattr(reader, "read_fields") else reader.read_row(g)
        except DataError as e:
            yield e.at(path, g)
            continue
        for e in validate_row(schema, values, max_pixels):
            yield e.at(path, g)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ofa-data validate", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="TSV or HDF5 files")
    parser.add_argument("--task", required=True, help="data layout: caption, refcoco, vqa, snli_ve, image_classify, ...")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest image accepted (pixels)")
    parser.add_argument("--max-report", type=int, default=50, help="print at most this many problems per file")
    args = parser.parse_args(argv)
    bad_total = 0
    for path in args.files:
        rows = set()
        count = 0
        for err in validate_file(path, args.task, args.max_pixels):
            count += 1
            rows.add(err.row)
            if count <= args.max_report:
                print(f"ERROR {err}", file=sys.stderr)
        if count > args.max_report:
            print(f"... {count - args.max_report} more problems in {path}", file=sys.stderr)
        status = "OK" if not count else f"{len(rows)} bad rows, {count} problems"
        print(f"{path}: {status}")
        bad_total += count
    return 1 if bad_total else 0


if __name__ == "__main__":
    sys.exit(main())
