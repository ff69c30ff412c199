"""Atomic file output, the one way the project writes files: to a temporary file beside the target, renamed
into place on success.

A crash, a kill or an exception while writing never leaves a half-written file under the final name, and
never replaces a good file with a partial one. The temporary file is ``{name}.{pid}.{random}.partial`` in
the target's folder (so the rename stays on one file system); the finished file gets the permissions the
user's umask gives a new file (``tempfile.mkstemp`` alone would leave it ``0600``). A ``.partial`` that a
killed process left behind (its process id no longer runs on this machine) is removed by the next write of
the same file.

- ``atomic_output(path)``: a temporary path to write by any means (``torch.save``, PIL, h5py ...);
- ``AtomicFile(path, mode)``: an open file with explicit ``commit()`` / ``abort()``, for streams that
  several files are written to side by side (also a context manager);
- ``write_atomic(path, data)``: a whole ``str`` (UTF-8) or ``bytes`` at once;
- ``save_pngs(images, path)``: PIL images as ``path`` and ``{stem}_{j}{ext}`` beside it.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator, List, Sequence, Union


def _umask() -> int:
    """The process's umask: read from ``/proc`` where there is one (no change to the process), else by setting
    and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def remove_stale_partials(path: str) -> List[str]:
    """Remove the ``{name}.{pid}.{random}.partial`` files beside ``path`` whose writing process is gone (a run
    killed mid-write); returns the removed paths. Files of running processes are left alone."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + "."
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".partial")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
            except OSError:
                pass
    return removed


def _temp_beside(path: str) -> str:
    """An empty temporary file in ``path``'s folder (created if missing), with the umask's permissions; stale
    partial files of the same target are removed first."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.{os.getpid()}.", suffix=".partial", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return tmp


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; on normal exit it replaces ``path``, on an exception it
    is removed and ``path`` is left as it was."""
    tmp = _temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicFile:
    """``open(tmp, mode, **kwargs)`` on a temporary file beside ``path``: ``commit()`` closes it and renames it
    to ``path``, ``abort()`` closes and removes it. As a context manager it commits on normal exit and
    aborts on an exception."""

    def __init__(self, path: str, mode: str = "w", **open_kwargs):
        if not any(c in mode for c in "wx"):
            raise ValueError(f"AtomicFile writes a new file: mode {mode!r} needs 'w'")
        self.path = path
        self.tmp = _temp_beside(path)
        try:
            self.file: IO = open(self.tmp, mode, **open_kwargs)
        except BaseException:
            os.remove(self.tmp)
            raise

    @property
    def closed(self) -> bool:
        return self.file.closed

    def write(self, data) -> int:
        return self.file.write(data)

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_atomic(path: str, data: Union[str, bytes]) -> None:
    """Write ``data`` (``str`` as UTF-8 with ``\\n`` line ends, or ``bytes``) to ``path`` atomically."""
    if isinstance(data, bytes):
        with AtomicFile(path, "wb") as f:
            f.write(data)
    else:
        with AtomicFile(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(data)


def save_pngs(images: Sequence, path: str) -> List[str]:
    """Write PIL ``images`` as PNGs, atomically: the first as ``path``, the others as ``{stem}_{j}{ext}``
    beside it (``ext`` ``.png`` when ``path`` has none); returns the paths."""
    stem, ext = os.path.splitext(path)
    paths = []
    for j, img in enumerate(images):
        target = path if j == 0 else f"{stem}_{j}{ext or '.png'}"
        with atomic_output(target) as tmp:
            img.save(tmp, format="PNG")
        paths.append(target)
    return paths
