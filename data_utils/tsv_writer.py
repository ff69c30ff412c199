"""Writing official-format TSV files atomically (temporary file, then rename)."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence, Union

from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import Schema
from ofa.io_utils import atomic_output

Row = Union[Sequence[str], Mapping[str, str]]


def _clean(value, path: str, row: int, column: str) -> str:
    text = str(value)
    if "\t" in text or "\n" in text or "\r" in text:
        raise DataError("field contains a tab or newline, which the TSV format cannot hold", path, row, column)
    return text


def write_tsv(path: str, schema: Schema, rows: Iterable[Row]) -> int:
    """Write rows (sequences in file order, or dicts keyed by column name) to ``path``.

    Returns:
        the number of rows written. The file appears only when complete.
    """
    n = 0
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for i, row in enumerate(rows):
            if isinstance(row, Mapping):
                missing = [c for c in schema.columns if c not in row]
                if missing:
                    raise DataError(f"row lacks columns {missing}", path, i)
                values = [row[c] for c in schema.columns]
            else:
                values = list(row)
                if len(values) != len(schema.columns):
                    raise DataError(f"expected {len(schema.columns)} columns {list(schema.columns)}, "
                                    f"got {len(values)}", path, i)
            f.write("\t".join(_clean(v, path, i, c) for v, c in zip(values, schema.columns)) + "\n")
            n += 1
    return n
