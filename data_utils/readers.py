"""Sharded, shuffled, resumable readers over official TSV files and HDF5 shards.

Both readers return rows as tuples of strings (TSV) or of ``str`` / ``bytes`` (HDF5 keeps images as
raw encoded bytes, no base64) in the order of the selected columns, and share one sampling scheme:

- ``rank`` / ``world_size`` split the rows so that **every rank gets the same number of rows, at least
  one**: rank ``r`` reads global positions ``r, r + W, r + 2W, ...`` (``ceil(total / world)`` of them,
  wrapping around to the start like ``DistributedSampler``), so no rank ever yields an empty batch
  (the official ``FileDataset`` gives ranks different counts and crashes on the empty last batch), and
  batch ``i`` of all ranks together is exactly batch ``i`` of a single process with ``W`` times the
  batch size. Duplicated rows are marked so evaluation can drop them (``is_padding``).
- ``set_epoch(e)`` reshuffles the global order with ``seed + e`` (no file copies); ``shuffle=False``
  keeps file order.
- ``state_dict()`` / ``load_state_dict()`` save and restore ``(epoch, position)``; ``__iter__`` continues
  from the restored position.

Random access is O(1): TSV rows through a byte-offset index built in one pass (optionally cached in
``<file>.index``), HDF5 rows directly.

Rows are numbered from 0 (``global_index``, ``read_row(g)``); errors name the place as an editor shows it:
the TSV index keeps each row's 1-based line number (blank lines, which hold no row, are counted), and
``locate`` puts it into a ``DataError`` (``FILE, line 7, field 'question': ...``); HDF5 shards have no lines
and say ``row N`` (1-based). Bytes that are not UTF-8 are a ``DataError`` naming the line and the field.
"""
from __future__ import annotations

import io
import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import Schema, get_schema, resolve_columns
from ofa.io_utils import write_atomic

Column = Union[str, int]


class _Sharded:
    """Rank slicing, epoch shuffling and resumable iteration over ``total`` global rows."""

    def _init_sampling(self, total: int, rank: int, world_size: int, shuffle: bool, seed: int):
        if total == 0:
            raise DataError("file holds no rows", self.path)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.total, self.rank, self.world_size = total, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.per_rank = math.ceil(total / world_size)
        self.epoch, self.position = 1, 0
        self._order = self._global_order()

    def _global_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.total)
        return np.random.default_rng(self.seed + self.epoch).permutation(self.total)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0
            self._order = self._global_order()

    def __len__(self) -> int:
        return self.per_rank

    def global_index(self, i: int) -> int:
        """Global row number behind this rank's ``i``-th row in the current epoch."""
        if not 0 <= i < self.per_rank:
            raise IndexError(f"row {i} out of range for a rank slice of {self.per_rank}")
        return int(self._order[(i * self.world_size + self.rank) % self.total])

    def is_padding(self, i: int) -> bool:
        """True for rows repeated only to even out the ranks."""
        return i * self.world_size + self.rank >= self.total

    def __getitem__(self, i: int):
        return self.read_row(self.global_index(i))

    def __iter__(self) -> Iterator:
        while self.position < self.per_rank:
            row = self[self.position]
            self.position += 1
            yield row

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.set_epoch(int(state["epoch"]))
        self.position = int(state["position"])

    def read_row(self, g: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def line_number(self, g: int) -> Optional[int]:
        """1-based line of global row ``g`` in the file; ``None`` where the file has no lines."""
        return None


def locate(error: DataError, reader, g: int) -> DataError:
    """``error`` with the file, the 0-based row ``g`` and, where the reader knows it, the row's 1-based line
    filled in (any reader: ones without ``line_number`` or ``path`` give what they have)."""
    number = getattr(reader, "line_number", None)
    return error.at(getattr(reader, "path", None), g, line=number(g) if number is not None else None)


def decode_text(raw: bytes, path: Optional[str] = None, row: Optional[int] = None, field: Optional[str] = None,
                line: Optional[int] = None) -> str:
    """UTF-8 bytes -> text; other bytes raise ``DataError`` saying which byte, at which character."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[:e.start].decode("utf-8", errors="replace")
        raise DataError(f"not UTF-8 text: byte 0x{raw[e.start]:02x} after {len(before)} characters "
                        f"({before[-20:]!r} precedes it)", path, row, field, line) from None


def split_line(raw: bytes, separator: str, names: Optional[Sequence[Optional[str]]] = None,
               path: Optional[str] = None, row: Optional[int] = None, line: Optional[int] = None) -> List[str]:
    """One TSV line (bytes, line break included or not) -> its fields, decoded.

    A field that is not UTF-8 raises ``DataError`` naming it: ``names[i]`` for the ``i``-th field when given
    (``None`` entries and fields past the names are told by their 1-based column number).
    """
    raw = raw.rstrip(b"\r\n")
    try:
        return raw.decode("utf-8").split(separator)
    except UnicodeDecodeError:
        pass
    parts = raw.split(separator.encode("utf-8"))
    out = []
    for i, part in enumerate(parts):
        name = names[i] if names is not None and i < len(names) else None
        try:
            out.append(decode_text(part, path, row, name, line))
        except DataError as e:
            if name is None:
                raise DataError(f"column {i + 1} of {len(parts)}: {e.message}", path, row, None, line) from None
            raise
    return out  # pragma: no cover - the whole line failed to decode, so one field does


class TSVReader(_Sharded):
    """Rows of an official OFA TSV file.

    Args:
        path: the ``.tsv`` file.
        schema: a ``Schema`` or its name; needed to select columns by name and to check the column
            count of every row.
        columns: names or indices of the columns to return (default: all, in file order).
        rank, world_size: this process's slice.
        shuffle, seed: per-epoch shuffling of the global order.
        index_cache: store the byte-offset index in ``<path>.index`` and reuse it while the file's
            size and modification time are unchanged.
        names: names for the selected columns (legacy ``--selected-cols`` index lists on files of
            another layout; the column count is then not checked).
    """

    def __init__(self, path: str, schema: Union[Schema, str, None] = None, columns: Optional[Sequence[Column]] = None,
                 rank: int = 0, world_size: int = 1, shuffle: bool = False, seed: int = 1,
                 separator: str = "\t", index_cache: bool = False, names: Optional[Sequence[str]] = None):
        self.path = path
        self._names = tuple(names) if names is not None else None
        if not os.path.isfile(path):
            raise DataError("file not found", path)
        self.schema = get_schema(schema) if isinstance(schema, str) else schema
        self.separator = separator
        if columns is None:
            self.columns: Optional[Tuple[int, ...]] = None
        elif self.schema is not None:
            self.columns = resolve_columns(self.schema, columns)
        else:
            if not all(isinstance(c, int) for c in columns):
                raise DataError("selecting columns by name needs a schema", path)
            self.columns = tuple(columns)  # type: ignore[arg-type]
        self.offsets, self.lines = self._load_index(index_cache)
        self._handle = None
        self._init_sampling(len(self.offsets), rank, world_size, shuffle, seed)

    @property
    def column_names(self) -> Tuple[str, ...]:
        if self._names is not None:
            return self._names
        if self.schema is None:
            return tuple(str(c) for c in (self.columns or ()))
        idx = self.columns if self.columns is not None else range(len(self.schema.columns))
        return tuple(self.schema.columns[i] for i in idx)

    def _load_index(self, use_cache: bool) -> Tuple[np.ndarray, np.ndarray]:
        """``(byte offset, 1-based line number)`` of every non-blank line, from ``<path>.index`` when that
        cache matches the file's size and modification time (a stale or unreadable cache is rebuilt)."""
        stat = os.stat(self.path)
        cache = self.path + ".index"
        if use_cache and os.path.isfile(cache):
            try:
                with np.load(cache, allow_pickle=False) as saved:
                    if int(saved["size"]) == stat.st_size and int(saved["mtime"]) == stat.st_mtime_ns:
                        return saved["offsets"], saved["lines"]
            except (OSError, ValueError, KeyError, EOFError):  # an old (pickled) or broken cache: rebuild it
                pass
        offsets: List[int] = []
        lines: List[int] = []
        pos = 0
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    offsets.append(pos)
                    lines.append(number)
                pos += len(line)
        arr, nums = np.asarray(offsets, dtype=np.int64), np.asarray(lines, dtype=np.int64)
        if use_cache:
            buf = io.BytesIO()
            np.savez(buf, size=stat.st_size, mtime=stat.st_mtime_ns, offsets=arr, lines=nums)
            write_atomic(cache, buf.getvalue())
        return arr, nums

    def line_number(self, g: int) -> int:
        """1-based line of global row ``g`` in the file, as an editor numbers it."""
        return int(self.lines[g])

    def _field_names(self, count: int) -> Optional[List[Optional[str]]]:
        """Names of a row's ``count`` fields where they can be told (for messages)."""
        if self.schema is not None and count == len(self.schema.columns):
            return list(self.schema.columns)
        if self._names is not None and self.columns is not None:
            names: List[Optional[str]] = [None] * count
            for name, c in zip(self._names, self.columns):
                if 0 <= c < count:
                    names[c] = name
            return names
        return None

    def _file(self):
        if self._handle is None:
            self._handle = open(self.path, "rb")
        return self._handle

    def __getstate__(self):  # file handles do not cross process boundaries (DataLoader workers)
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def read_fields(self, g: int) -> List[str]:
        """All fields of global row ``g``, decoded, with the column count checked."""
        f = self._file()
        f.seek(int(self.offsets[g]))
        raw = f.readline().rstrip(b"\r\n")
        line = self.line_number(g)
        count = raw.count(self.separator.encode("utf-8")) + 1
        fields = split_line(raw, self.separator, self._field_names(count), self.path, g, line)
        if self.schema is not None and len(fields) != len(self.schema.columns):
            raise DataError(f"expected {len(self.schema.columns)} columns {list(self.schema.columns)}, "
                            f"got {len(fields)}", self.path, g, line=line)
        return fields

    def read_row(self, g: int) -> Tuple[str, ...]:
        fields = self.read_fields(g)
        if self.columns is None:
            return tuple(fields)
        try:
            return tuple(fields[c] for c in self.columns)
        except IndexError:
            raise DataError(f"row has {len(fields)} columns, fewer than the selected {self.columns}",
                            self.path, g, line=self.line_number(g)) from None


class ElementReader:
    """``dataset[g]`` of a one-dimensional HDF5 dataset through h5py's low-level API: a one-element
    hyperslab read into a reused buffer, about 3x faster than ``dataset[g]``, which builds its selection
    anew from the index expression at every call (the same value: ``bytes`` for variable-length strings,
    an array for variable-length bytes)."""

    def __init__(self, dataset):
        import h5py

        self.dataset = dataset
        self.rows = dataset.shape[0]
        self.file_space = dataset.id.get_space()
        self.memory_space = h5py.h5s.create_simple((1,))
        self.buffer = np.empty((1,), dtype=dataset.dtype)

    def __call__(self, g: int):
        if not 0 <= g < self.rows:
            raise IndexError(f"row {g} is outside the {self.rows} rows of {self.dataset.name}")
        self.file_space.select_hyperslab((g,), (1,))
        self.dataset.id.read(self.memory_space, self.file_space, self.buffer)
        return self.buffer[0]


class HDF5Reader(_Sharded):
    """Rows of an HDF5 shard written by ``tsv_to_hdf5``: one dataset per column.

    Text columns are variable-length UTF-8 strings; image columns hold the raw encoded image bytes
    (``bytes``). The file's ``schema`` attribute names the layout.
    """

    def __init__(self, path: str, columns: Optional[Sequence[Column]] = None, rank: int = 0, world_size: int = 1,
                 shuffle: bool = False, seed: int = 1):
        import h5py

        self.path = path
        if not os.path.isfile(path):
            raise DataError("file not found", path)
        self._h5 = None
        self._sets = None
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"not an HDF5 file ({str(e).splitlines()[0]})", path) from None
        with f:
            name = f.attrs.get("schema")
            if name is None:
                raise DataError("not an OFA HDF5 shard (no 'schema' attribute)", path)
            self.schema = get_schema(str(name))
            total = int(f.attrs["rows"])
        idx = resolve_columns(self.schema, columns) if columns is not None else tuple(range(len(self.schema.columns)))
        self.columns = idx
        self._init_sampling(total, rank, world_size, shuffle, seed)

    @property
    def column_names(self) -> Tuple[str, ...]:
        return tuple(self.schema.columns[i] for i in self.columns)

    def _file(self):
        if self._h5 is None:
            import h5py

            self._h5 = h5py.File(self.path, "r")
        return self._h5

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_sets"] = None
        return state

    def _datasets(self):
        if self._sets is None:
            f = self._file()
            self._sets = [(self.schema.columns[c], ElementReader(f[self.schema.columns[c]])) for c in self.columns]
        return self._sets

    def read_row(self, g: int) -> Tuple[Union[str, bytes], ...]:
        out = []
        for name, element in self._datasets():
            value = element(g)
            if name in self.schema.image_columns:
                out.append(value.tobytes())
            elif isinstance(value, bytes):
                out.append(decode_text(value, self.path, g, name))
            else:
                out.append(str(value))
        return tuple(out)


def open_reader(path: str, schema: Union[Schema, str, None] = None, columns: Optional[Sequence[Column]] = None,
                **kwargs) -> _Sharded:
    """A ``TSVReader`` or ``HDF5Reader`` by file extension (``.h5`` / ``.hdf5`` -> HDF5)."""
    if path.endswith((".h5", ".hdf5")):
        return HDF5Reader(path, columns=columns, **{k: v for k, v in kwargs.items() if k in
                                                    ("rank", "world_size", "shuffle", "seed")})
    return TSVReader(path, schema=schema, columns=columns, **kwargs)
