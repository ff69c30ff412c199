"""Readers: rank slicing, per-epoch shuffling, resume, column selection, HDF5 round trips."""
from __future__ import annotations

import base64

import pytest

from data_helpers import caption_rows, png, write
from ofa.data_utils.errors import DataError
from ofa.data_utils.hdf5 import hdf5_to_tsv, tsv_to_hdf5
from ofa.data_utils.readers import HDF5Reader, TSVReader, open_reader


@pytest.mark.parametrize("total,world", [(5, 2), (5, 3), (2, 4), (7, 7), (1, 3)])
def test_every_rank_gets_the_same_nonzero_number_of_rows(tmp_path, total, world):
    path = write(tmp_path, "caption", caption_rows(total))
    readers = [TSVReader(path, "caption", rank=r, world_size=world) for r in range(world)]
    counts = {len(r) for r in readers}
    assert counts == {-(-total // world)} and min(counts) >= 1
    real = [r.global_index(i) for r in readers for i in range(len(r)) if not r.is_padding(i)]
    assert sorted(real) == list(range(total))  # padding rows aside, every row is read exactly once


def test_columns_are_selected_by_name_or_index(tmp_path):
    path = write(tmp_path, "caption")
    by_name = TSVReader(path, "caption", columns=["uniq_id", "image", "caption"])
    by_index = TSVReader(path, "caption", columns=[0, 4, 2])
    assert by_name[2] == by_index[2]
    assert by_name[2][0] == "2" and by_name.column_names == ("uniq_id", "image", "caption")
    with pytest.raises(DataError, match="unknown column 'img'"):
        TSVReader(path, "caption", columns=["img"])


def test_shuffle_changes_per_epoch_and_is_reproducible(tmp_path):
    path = write(tmp_path, "caption", caption_rows(20))
    a = TSVReader(path, "caption", shuffle=True, seed=3)
    b = TSVReader(path, "caption", shuffle=True, seed=3)
    e1 = [a.global_index(i) for i in range(20)]
    assert e1 == [b.global_index(i) for i in range(20)] and sorted(e1) == list(range(20))
    a.set_epoch(2)
    assert [a.global_index(i) for i in range(20)] != e1
    assert [TSVReader(path, "caption").global_index(i) for i in range(20)] == list(range(20))


def test_iteration_resumes_at_the_saved_position(tmp_path):
    path = write(tmp_path, "caption", caption_rows(10))
    first = TSVReader(path, "caption", shuffle=True, seed=1)
    first.set_epoch(2)
    it = iter(first)
    seen = [next(it)[0] for _ in range(4)]
    state = first.state_dict()
    resumed = TSVReader(path, "caption", shuffle=True, seed=1)
    resumed.load_state_dict(state)
    rest = [row[0] for row in resumed]
    full = TSVReader(path, "caption", shuffle=True, seed=1)
    full.set_epoch(2)
    assert seen + rest == [row[0] for row in full]


def test_wrong_column_count_names_file_and_row(tmp_path):
    path = write(tmp_path, "caption", caption_rows(3))
    with open(path, "a") as f:
        f.write("9\t9\tonly three\n")
    reader = TSVReader(path, "caption")
    with pytest.raises(DataError, match=r"caption.tsv, line 4: expected 5 columns"):
        reader.read_fields(3)


def test_index_cache_is_reused_while_the_file_is_unchanged(tmp_path):
    path = write(tmp_path, "caption", caption_rows(4))
    TSVReader(path, "caption", index_cache=True)
    assert (tmp_path / "caption.tsv.index").is_file()
    assert TSVReader(path, "caption", index_cache=True)[3][0] == "3"


def test_tsv_hdf5_round_trip_loses_nothing(tmp_path):
    rows = caption_rows(4)
    raw = base64.b64decode(rows[1]["image"])
    rows[1]["image"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")  # a non-standard spelling survives too
    src = write(tmp_path, "caption", rows)
    h5 = str(tmp_path / "c.h5")
    assert tsv_to_hdf5(src, h5, "caption") == 4
    back = str(tmp_path / "back.tsv")
    assert hdf5_to_tsv(h5, back) == 4
    assert open(back, "rb").read() == open(src, "rb").read()


def test_hdf5_reader_gives_raw_image_bytes_with_random_access(tmp_path):
    src = write(tmp_path, "caption", caption_rows(6))
    h5 = str(tmp_path / "c.h5")
    tsv_to_hdf5(src, h5, "caption")
    reader = open_reader(h5, columns=["uniq_id", "image", "caption"], rank=1, world_size=2)
    assert isinstance(reader, HDF5Reader) and len(reader) == 3
    uid, image, caption = reader[2]
    assert uid == "5" and image == base64.b64decode(png()) and caption.startswith("a red square number 5")


def test_hdf5_element_reads_equal_h5py_indexing(tmp_path):
    """``ElementReader`` (the low-level one-element read behind ``HDF5Reader.read_row``) gives ``dataset[g]``."""
    import h5py
    import numpy as np

    from ofa.data_utils.readers import ElementReader

    src = write(tmp_path, "caption", caption_rows(5))
    h5 = str(tmp_path / "c.h5")
    tsv_to_hdf5(src, h5, "caption")
    with h5py.File(h5, "r") as f:
        for name in ("uniq_id", "image", "caption"):
            element = ElementReader(f[name])
            for g in (3, 0, 4, 3):
                value, expected = element(g), f[name][g]
                assert np.array_equal(value, expected) if isinstance(expected, np.ndarray) else value == expected
            with pytest.raises(IndexError):
                element(5)


def test_bad_base64_fails_the_hdf5_conversion_with_its_row(tmp_path):
    rows = caption_rows(3)
    rows[2]["image"] = "not base64 at all!!"
    src = write(tmp_path, "caption", rows)
    with pytest.raises(DataError, match=r"caption.tsv, line 3, field 'image'"):
        tsv_to_hdf5(src, str(tmp_path / "bad.h5"), "caption")
    assert not (tmp_path / "bad.h5").exists()
