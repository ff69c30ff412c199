"""The one error type of the data layer: it names the file, the row and the field."""
from __future__ import annotations

from typing import Optional


class DataError(ValueError):
    """Bad input data.

    Args:
        message: what is wrong.
        path: the file.
        row: 0-based data row number within the file (``None`` for file-level problems).
        field: the column name.
    """

    def __init__(self, message: str, path: Optional[str] = None, row: Optional[int] = None,
                 field: Optional[str] = None):
        self.message, self.path, self.row, self.field = message, path, row, field
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    def at(self, path: Optional[str] = None, row: Optional[int] = None, field: Optional[str] = None) -> "DataError":
        """A copy with the location filled in where it was unknown."""
        return DataError(self.message, self.path if self.path is not None else path,
                         self.row if self.row is not None else row,
                         self.field if self.field is not None else field)
