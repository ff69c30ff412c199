"""Atomic file output: write to a temporary file beside the target, rename into place on success.

A crash, a kill or an exception while writing never leaves a half-written file under the final
name, and never replaces a good file with a partial one.
"""
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; on normal exit it replaces ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
