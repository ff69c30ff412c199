"""Lossless conversion between official TSV files and HDF5 shards.

An HDF5 shard holds one dataset per schema column: text as variable-length UTF-8 strings, images as
variable-length ``uint8`` arrays of the **raw encoded bytes** (no base64: a third smaller and O(1)
random access without parsing). Attributes: ``schema`` (name) and ``rows``.

Going back to TSV re-encodes images as standard base64. Where a source row used another spelling
(URL-safe alphabet, missing padding), the original string is kept in ``<column>__b64`` so that
``hdf5_to_tsv(tsv_to_hdf5(f))`` reproduces ``f`` byte for byte.
"""
from __future__ import annotations

import base64
import os
from typing import Optional

import numpy as np

from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema
from ofa.data_utils.images import b64_to_bytes
from ofa.data_utils.readers import TSVReader, decode_text
from ofa.data_utils.tsv_writer import write_tsv
from ofa.io_utils import atomic_output

CHUNK = 1024


def tsv_to_hdf5(tsv_path: str, h5_path: str, schema: str) -> int:
    """Convert ``tsv_path`` (official layout ``schema``) into an HDF5 shard; returns the row count."""
    import h5py

    sch = get_schema(schema)
    reader = TSVReader(tsv_path, schema=sch)
    with atomic_output(h5_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = sch.name
            str_t = h5py.string_dtype("utf-8")
            byte_t = h5py.vlen_dtype(np.uint8)
            sets = {}
            for col in sch.columns:
                is_img = col in sch.image_columns
                sets[col] = f.create_dataset(col, shape=(0,), maxshape=(None,), chunks=(CHUNK,),
                                             dtype=byte_t if is_img else str_t)
                if is_img:
                    sets[col + "__b64"] = f.create_dataset(col + "__b64", shape=(0,), maxshape=(None,),
                                                           chunks=(CHUNK,), dtype=str_t)
            n = reader.total
            for ds in sets.values():
                ds.resize((n,))
            for g in range(n):
                fields = reader.read_fields(g)
                for col, value in zip(sch.columns, fields):
                    if col in sch.image_columns:
                        try:
                            raw = b64_to_bytes(value)
                        except DataError as e:
                            raise e.at(tsv_path, g, col, line=reader.line_number(g)) from None
                        sets[col][g] = np.frombuffer(raw, dtype=np.uint8)
                        if base64.b64encode(raw).decode("ascii") != value:
                            sets[col + "__b64"][g] = value
                    else:
                        sets[col][g] = value
            f.attrs["rows"] = n
    return n


def _open_h5(path: str):
    """``h5py.File(path, "r")``; a missing file or one that is not HDF5 is a ``DataError`` naming it."""
    import h5py

    if not os.path.isfile(path):
        raise DataError("file not found", path)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"not an HDF5 file ({str(e).splitlines()[0]})", path) from None


def hdf5_to_tsv(h5_path: str, tsv_path: str) -> int:
    """Convert an HDF5 shard back to the official TSV layout; returns the row count."""
    with _open_h5(h5_path) as f:
        if "schema" not in f.attrs:
            raise DataError("not an OFA HDF5 shard (no 'schema' attribute)", h5_path)
        sch = get_schema(str(f.attrs["schema"]))
        n = int(f.attrs["rows"])
        missing = [c for c in sch.columns if c not in f or (c in sch.image_columns and c + "__b64" not in f)]
        if missing:
            raise DataError(f"the {sch.name} shard lacks the datasets {missing}", h5_path)

        def rows():
            for g in range(n):
                out = {}
                for col in sch.columns:
                    value = f[col][g]
                    if col in sch.image_columns:
                        original = f[col + "__b64"][g]
                        original = original.decode("utf-8") if isinstance(original, bytes) else original
                        out[col] = original or base64.b64encode(value.tobytes()).decode("ascii")
                    elif isinstance(value, bytes):
                        out[col] = decode_text(value, h5_path, g, col)
                    else:
                        out[col] = str(value)
                yield out

        return write_tsv(tsv_path, sch, rows())


def convert(src: str, dst: str, schema: Optional[str] = None) -> int:
    """TSV -> HDF5 or HDF5 -> TSV by the destination's extension."""
    if dst.endswith((".h5", ".hdf5")):
        if schema is None:
            raise DataError("converting TSV to HDF5 needs --schema (the official layout of the TSV)", src)
        return tsv_to_hdf5(src, dst, schema)
    return hdf5_to_tsv(src, dst)
