"""``ofa.io_utils``, the one way the project writes files: a failed write never leaves a half-written file
or replaces a good one, and a finished file has the permissions the user's umask gives."""
from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from ofa.io_utils import AtomicFile, atomic_output, save_pngs, write_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_helper_gives_the_umask_permissions(tmp_path, umask_027):
    write_atomic(str(tmp_path / "a.txt"), "text\n")
    with atomic_output(str(tmp_path / "b.bin")) as tmp:
        open(tmp, "wb").write(b"\x00")
    with AtomicFile(str(tmp_path / "c.tsv"), "w", encoding="utf-8") as f:
        f.write("x\ty\n")
    (png,) = save_pngs([Image.new("RGB", (4, 4))], str(tmp_path / "d.png"))
    for name in ("a.txt", "b.bin", "c.tsv", "d.png"):
        assert _mode(tmp_path / name) == umask_027, name
    assert (tmp_path / "a.txt").read_text() == "text\n" and (tmp_path / "c.tsv").read_text() == "x\ty\n"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "keep.txt"
    write_atomic(str(target), "good\n")
    with pytest.raises(RuntimeError):
        with atomic_output(str(target)) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError):
        with AtomicFile(str(target), "w") as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_atomic_file_commits_or_aborts_explicitly_and_refuses_to_append(tmp_path):
    a, b = AtomicFile(str(tmp_path / "a"), "w"), AtomicFile(str(tmp_path / "b"), "w")
    a.write("1")
    b.write("2")
    assert not (tmp_path / "a").exists() and not a.closed  # nothing under the final name before commit
    a.commit()
    b.abort()
    assert (tmp_path / "a").read_text() == "1" and not (tmp_path / "b").exists() and a.closed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with pytest.raises(ValueError, match="needs 'w'"):
        AtomicFile(str(tmp_path / "a"), "a")


def test_save_pngs_names_the_others_beside_the_first(tmp_path):
    images = [Image.new("RGB", (2, 2), (k, 0, 0)) for k in range(3)]
    paths = save_pngs(images, str(tmp_path / "sub" / "img.png"))
    assert [os.path.basename(p) for p in paths] == ["img.png", "img_1.png", "img_2.png"]
    assert [Image.open(p).getpixel((0, 0))[0] for p in paths] == [0, 1, 2]
