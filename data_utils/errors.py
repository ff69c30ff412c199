"""The one error type of the data layer: it names the file, the line (or row) and the field."""
from __future__ import annotations

from typing import Optional

from ofa.errors import UserError


class DataError(UserError, ValueError):
    """Bad input data.

    The message reads ``FILE, line 7, field 'question': WHAT`` where the line is known (TSV and JSONL files:
    the 1-based line number an editor shows, blank lines counted), else ``FILE, row 7, ...`` with the 1-based
    row (HDF5 shards, records of a JSON list, rows being written).

    Args:
        message: what is wrong.
        path: the file.
        row: 0-based data row (or record) number within the file (``None`` for file-level problems); a
            TSV reader's global row index, the key ``--bad-rows skip`` counts rows by.
        field: the column name.
        line: 1-based line of the file, when the file has lines.
    """

    def __init__(self, message: str, path: Optional[str] = None, row: Optional[int] = None,
                 field: Optional[str] = None, line: Optional[int] = None):
        self.message, self.path, self.row, self.field, self.line = message, path, row, field, line
        super().__init__(f"{self.where}: {message}" if self.where else message)

    @property
    def where(self) -> str:
        """``FILE, line L, field 'F'`` (the parts that are known), ``""`` when none is."""
        parts = []
        if self.path is not None:
            parts.append(str(self.path))
        if self.line is not None:
            parts.append(f"line {self.line}")
        elif self.row is not None:
            parts.append(f"row {self.row + 1}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts)

    def at(self, path: Optional[str] = None, row: Optional[int] = None, field: Optional[str] = None,
           line: Optional[int] = None) -> "DataError":
        """A copy with the location filled in where it was unknown."""
        return DataError(self.message, self.path if self.path is not None else path,
                         self.row if self.row is not None else row,
                         self.field if self.field is not None else field,
                         self.line if self.line is not None else line)
