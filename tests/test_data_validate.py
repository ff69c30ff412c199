"""``ofa-data validate`` reports every bad row by number and field; training fails or skips the same way."""
from __future__ import annotations

import base64
import io

from PIL import Image

from data_helpers import caption_rows, refcoco_rows, vqa_rows, write
from ofa.data_utils.cli import main as ofa_data
from ofa.data_utils.validate import validate_file


def problems(path, task, **kw):
    return [(e.row, e.field, e.message) for e in validate_file(path, task, **kw)]


def test_clean_files_pass_and_exit_zero(tmp_path, capsys):
    paths = [write(tmp_path, t) for t in ("caption", "refcoco", "vqa", "snli_ve", "image_classify")]
    for p, t in zip(paths, ("caption", "refcoco", "vqa", "snli_ve", "image_classify")):
        assert problems(p, t) == []
    assert ofa_data(["validate", paths[0], "--task", "caption"]) == 0
    assert "OK" in capsys.readouterr().out


def test_truncated_base64_is_reported_by_row(tmp_path):
    rows = caption_rows(3)
    rows[1]["image"] = rows[1]["image"][: len(rows[1]["image"]) // 2]
    found = problems(write(tmp_path, "caption", rows), "caption")
    assert [(r, f) for r, f, _ in found] == [(1, "image")]


def test_undecodable_image_is_reported_by_row(tmp_path):
    rows = caption_rows(3)
    rows[2]["image"] = base64.b64encode(b"this is plain text, not a picture").decode()
    (row, field, msg), = problems(write(tmp_path, "caption", rows), "caption")
    assert (row, field) == (2, "image") and "does not decode" in msg


def test_image_over_the_pixel_limit_is_reported(tmp_path):
    rows = caption_rows(2)
    buf = io.BytesIO()
    Image.new("RGB", (400, 300)).save(buf, format="PNG")
    rows[0]["image"] = base64.b64encode(buf.getvalue()).decode()
    (row, field, msg), = problems(write(tmp_path, "caption", rows), "caption", max_pixels=100_000)
    assert (row, field) == (0, "image") and "decompression bomb" in msg


def test_wrong_column_count_is_reported_by_row(tmp_path):
    path = write(tmp_path, "vqa")
    with open(path, "a") as f:
        f.write("7\t7\twhat?\t1.0|!+no\n")
    (row, field, msg), = problems(path, "vqa")
    assert row == 4 and "expected 6 columns" in msg


def test_box_outside_the_image_and_reversed_box_are_reported(tmp_path):
    rows = refcoco_rows(3)
    rows[0]["region_coord"] = "10,5,90,20"  # the image is 40 x 30
    rows[2]["region_coord"] = "30,5,10,20"
    found = problems(write(tmp_path, "refcoco", rows), "refcoco")
    assert [(r, f) for r, f, _ in found] == [(0, "region_coord"), (2, "region_coord")]
    assert "outside the 40x30 image" in found[0][2] and "x0,y0,x1,y1 order" in found[1][2]


def test_bad_answer_confidence_and_empty_fields_are_reported(tmp_path):
    rows = vqa_rows(3)
    rows[0]["answers"] = "high|!+yes"
    rows[1]["question"] = "  "
    found = problems(write(tmp_path, "vqa", rows), "vqa")
    assert [(r, f) for r, f, _ in found] == [(0, "answers"), (1, "question")]


def test_cli_exits_nonzero_and_names_file_row_and_field(tmp_path, capsys):
    rows = caption_rows(2)
    rows[1]["image"] = "@@@"
    path = write(tmp_path, "caption", rows)
    assert ofa_data(["validate", path, "--task", "caption"]) == 1
    err = capsys.readouterr().err
    assert f"{path}, line 2, field 'image'" in err


def test_image_gen_codes_must_be_integers_filling_a_square_grid(tmp_path):
    path = tmp_path / "image_gen.tsv"
    good = " ".join(str(k) for k in range(16))
    path.write_text(f"0\t{good}\ta red circle\n1\t1 2 x 4\ta blue star\n2\t1 2 3\ta square\n3\t\tno codes\n")
    found = problems(str(path), "image_gen")
    assert [(r, f) for r, f, _ in found] == [(1, "code"), (2, "code"), (3, "code")]
    assert "'x'" in found[0][2] and "square" in found[1][2] and "empty" in found[2][2]
