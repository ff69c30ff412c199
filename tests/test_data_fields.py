"""Every field of every data row is checked, and every problem is named as an editor shows it (issue 17).

- encoding: a byte that is not UTF-8 is a ``DataError`` naming the file, line and field; ``ofa-data validate``
  reports it and reads on; a dataset skips it under ``--bad-rows skip``;
- numbers: finite and in range in every layout (``validate_row`` and the datasets that read them);
- text longer than the model's positions: sources are cut to ``max_src_length`` tokens, decoder inputs to the
  decoder's positions, so a tiny model runs on a 3000-character URL or a 2000-character CJK question;
- line numbers: ``FILE, line N`` is the 1-based line of the file (blank lines counted); HDF5 says ``row N``;
- ``ofa-data`` and its converters: a mistake is one line ``ofa-data: error: ...`` and exit status 2, with
  nothing written.
"""
from __future__ import annotations

import io
import json
import os
import pickle

import pytest
import torch
from PIL import Image

from data_helpers import caption_rows, png, refcoco_rows, vqa_rows, write
from ofa.data_utils.cli import main as ofa_data
from ofa.data_utils.datasets import DATASETS, DataConfig
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema, parse_answers, parse_box, parse_detection_boxes
from ofa.data_utils.hdf5 import tsv_to_hdf5
from ofa.data_utils.readers import TSVReader, open_reader, split_line
from ofa.data_utils.validate import validate_file, validate_row
from ofa.tokenizer import load_tokenizer

PATCH = 64  # ofa_test's 4 x 4 patches


@pytest.fixture(scope="module")
def tok(spm_dir):
    return load_tokenizer(spm_dir)


def tsv_line(task, row) -> bytes:
    return ("\t".join(str(row[c]) for c in get_schema(task).columns) + "\n").encode("utf-8")


def dataset(path, task, tok, split="train", **cfg):
    cls = DATASETS[task]
    return cls(TSVReader(str(path), task, columns=cls.columns), tok, DataConfig(patch_image_size=PATCH, **cfg), split)


# ------------------------------------------------------------------------------------------------ 1. encoding
def bad_byte_vqa(tmp_path):
    """A vqa file: a good row on line 1, a blank line, a row whose question holds byte 0xff on line 3, a row
    with a bad box-free but bad-confidence answer on line 4."""
    rows = vqa_rows(3)
    lines = [tsv_line("vqa", rows[0]), b"\n", tsv_line("vqa", rows[1]).replace(b"What color", b"What \xff color"),
             tsv_line("vqa", {**rows[2], "answers": "nan|!+red"})]
    path = tmp_path / "vqa.tsv"
    path.write_bytes(b"".join(lines))
    return path


def test_a_non_utf8_byte_names_the_file_line_and_field(tmp_path):
    path = bad_byte_vqa(tmp_path)
    reader = TSVReader(str(path), "vqa")
    with pytest.raises(DataError) as e:
        reader.read_fields(1)
    assert str(e.value).startswith(f"{path}, line 3, field 'question': not UTF-8 text: byte 0xff after 5 characters")
    assert (e.value.row, e.value.line, e.value.field) == (1, 3, "question")


def test_a_non_utf8_byte_in_a_row_of_the_wrong_width_names_its_column():
    with pytest.raises(DataError, match=r"^f.tsv, line 9: column 2 of 3: not UTF-8 text: byte 0xfe"):
        split_line(b"a\tb\xfe\tc\r\n", "\t", ["x", None], "f.tsv", 8, 9)
    assert split_line("a\té\n".encode(), "\t") == ["a", "é"]


def test_validate_reports_the_bad_byte_and_reads_on(tmp_path, capsys):
    path = bad_byte_vqa(tmp_path)
    found = [(e.line, e.field) for e in validate_file(str(path), "vqa")]
    assert found == [(3, "question"), (4, "answers")]
    assert ofa_data(["validate", str(path), "--task", "vqa"]) == 1
    captured = capsys.readouterr()
    assert f"{path}, line 3, field 'question': not UTF-8 text" in captured.err
    assert f"{path}, line 4, field 'answers': answer confidence 'nan' is not a finite number" in captured.err
    assert f"{path}: 2 bad rows, 2 problems" in captured.out


def test_training_fails_on_the_bad_byte_or_skips_it(tmp_path, tok):
    path = bad_byte_vqa(tmp_path)
    with pytest.raises(DataError, match=r"vqa.tsv, line 3, field 'question': not UTF-8"):
        dataset(path, "vqa", tok)[1]
    ds = dataset(path, "vqa", tok, bad_rows="skip")
    assert ds[0] is not None and ds[1] is None and ds[2] is None


def test_cider_df_names_the_line_of_a_bad_byte(tmp_path, capsys):
    path = tmp_path / "c.tsv"
    path.write_bytes(b"0\t7\ta red circle\n\n1\t8\ta \xc3 star\n")
    assert ofa_data(["cider-df", str(path), "--out", str(tmp_path / "w.p")]) == 2
    assert f"ofa-data: error: {path}, line 3, field 'column 2': not UTF-8 text: byte 0xc3" in capsys.readouterr().err
    assert not (tmp_path / "w.p").exists()


# ------------------------------------------------------------------------------------------------ 2. numbers
IMG = png()  # 40 x 30
CODES16 = " ".join(["3"] * 16)

# (layout, {column: value} over a good row, the field named, a substring of the message)
BAD_FIELDS = [
    ("refcoco", {"region_coord": "nan,5,30,20"}, "region_coord", "'nan' is not a finite number"),
    ("refcoco", {"region_coord": "10,5,inf,20"}, "region_coord", "'inf' is not a finite number"),
    ("refcoco", {"region_coord": "10,5,10,20"}, "region_coord", "x0 < x1 and y0 < y1"),
    ("refcoco", {"region_coord": "30,5,10,20"}, "region_coord", "x0 < x1 and y0 < y1"),
    ("refcoco", {"region_coord": "10,5,90,20"}, "region_coord", "outside the 40x30 image"),
    ("refcoco", {"region_coord": "-3,5,10,20"}, "region_coord", "outside the 40x30 image"),
    ("refcoco", {"region_coord": "1,2,3"}, "region_coord", "must have 4 comma-separated numbers"),
    ("refcoco", {"region_coord": "a,2,3,4"}, "region_coord", "'a' is not a number"),
    ("vqa", {"answers": "nan|!+red"}, "answers", "'nan' is not a finite number"),
    ("vqa", {"answers": "inf|!+red"}, "answers", "'inf' is not a finite number"),
    ("vqa", {"answers": "1.5|!+red"}, "answers", "outside [0, 1]"),
    ("vqa", {"answers": "-0.3|!+red"}, "answers", "outside [0, 1]"),
    ("vqa", {"answers": "high|!+red"}, "answers", "is not a number"),
    ("vqa", {"answers": "0.6|!+ "}, "answers", "empty answer"),
    ("vqa", {"answers": "red"}, "answers", "is not 'confidence|!+answer'"),
    ("vqa", {"question": " "}, "question", "empty field"),
    ("snli_ve", {"label": "maybe"}, "label", "is not one of"),
    ("image_classify", {"label_index": "0"}, "label_index", "is not a positive integer"),
    ("image_classify", {"label_index": "-2"}, "label_index", "is not a positive integer"),
    ("image_classify", {"label_index": "2.0"}, "label_index", "is not a positive integer"),
    ("image_classify", {"label_index": "\u00b2"}, "label_index", "is not a positive integer"),
    ("image_gen", {"code": CODES16[:-1] + "\u00b2"}, "code", "is not a non-negative integer"),
    ("image_gen", {"code": CODES16[:-1] + "9000"}, "code", "must lie in [0, 8192)"),
    ("image_gen", {"code": CODES16[:-2]}, "code", "do not fill a square code grid"),
    ("pretrain_vl", {"type": "ocr"}, "type", "is not one of"),
    ("pretrain_vl", {"type": "qa", "refs": "nan|!+red"}, "refs", "not a finite number"),
    ("pretrain_vl", {"type": "qa", "question": ""}, "question", "a qa row needs it"),
    ("pretrain_vl", {"type": "visual_grounding", "refs": "1,2,nan,4"}, "refs", "not a finite number"),
    ("pretrain_vl", {"type": "visual_grounding", "refs": "1,2,50,4"}, "refs", "outside the 40x30 image"),
    ("pretrain_image", {"code": "-1 " + CODES16[2:]}, "code", "is not a non-negative integer"),
    ("pretrain_detection", {"boxes": "1,2,3,4,x,cat"}, "boxes", "category id 'x' is not an integer >= 0"),
    ("pretrain_detection", {"boxes": "1,2,3,4,1,cat&&1,2,nan,4,2,dog"}, "boxes", "'nan' is not a finite number"),
    ("pretrain_detection", {"boxes": "1,2,3,4,1, "}, "boxes", "empty category name"),
    ("pretrain_detection", {"boxes": "1,2,3,4"}, "boxes", "is not x0,y0,x1,y1,cat_id,cat_name"),
    ("pretrain_detection", {"boxes": "1,2,300,4,1,cat"}, "boxes", "outside the 40x30 image"),
]
GOOD = {
    "refcoco": {"uniq_id": "0", "image_id": "0", "text": "the square", "region_coord": "10,7.5,30,22.5", "image": IMG},
    "vqa": {"question_id": "0", "image_id": "0", "question": "what?", "answers": "0.6|!+red&&1|!+blue",
            "predicted_objects": "", "image": IMG},
    "snli_ve": {"uniq_id": "0", "image_id": "0", "image": IMG, "hypothesis": "a square", "caption": "a square",
                "label": "entailment"},
    "image_classify": {"image": IMG, "label_index": "3", "label_name": "square"},
    "image_gen": {"uniq_id": "0", "code": CODES16, "caption": "a square"},
    "pretrain_vl": {"uniq_id": "0", "image": IMG, "caption": "a square", "question": "what?", "refs": "0.3|!+red",
                    "gt_objects": "", "dataset_name": "x", "type": "qa"},
    "pretrain_image": {"uniq_id": "0", "image": IMG, "code": CODES16},
    "pretrain_detection": {"uniq_id": "0", "image": IMG, "boxes": "1,2,3,4,1,cat&&5,5,39,29,2,dog"},
}


@pytest.mark.parametrize("layout", sorted(GOOD))
def test_good_rows_of_every_layout_pass(layout):
    schema = get_schema(layout)
    assert validate_row(schema, [GOOD[layout][c] for c in schema.columns]) == []


@pytest.mark.parametrize("layout, change, field, message", BAD_FIELDS,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(BAD_FIELDS)])
def test_each_bad_number_or_field_is_named(layout, change, field, message):
    schema = get_schema(layout)
    row = {**GOOD[layout], **change}
    if layout == "pretrain_vl" and change.get("type") == "visual_grounding":
        row["caption"] = "the square"
    errors = validate_row(schema, [row[c] for c in schema.columns])
    assert [(e.field, message in e.message) for e in errors] == [(field, True)], [str(e) for e in errors]


def test_the_parsers_refuse_what_the_datasets_cannot_use():
    assert parse_answers("0.6|!+a|!+b&&1|!+c") == {"a|!+b": 0.6, "c": 1.0}  # official: the text after the first |!+
    assert parse_box("1,2.5,3,4") == (1.0, 2.5, 3.0, 4.0)
    assert parse_detection_boxes("1,2,3,4,7,traffic light, red") == [((1.0, 2.0, 3.0, 4.0), 7, "traffic light, red")]
    for text in ("1e999,0,1,1", "0,0,0,0", "0,0,1,-inf"):
        with pytest.raises(DataError, match="region_coord"):
            parse_box(text)


@pytest.mark.parametrize("task, change, field", [
    ("refcoco", {"region_coord": "nan,7.5,30,22.5"}, "region_coord"),
    ("refcoco", {"region_coord": "10,7.5,10,22.5"}, "region_coord"),
    ("vqa", {"answers": "inf|!+red"}, "answers"),
    ("vqa", {"answers": "nan|!+red&&1.0|!+blue"}, "answers"),
])
def test_the_datasets_refuse_the_same_numbers_and_skip_them_on_request(tmp_path, tok, task, change, field):
    rows = {"refcoco": refcoco_rows, "vqa": vqa_rows}[task](3)
    rows[1].update(change)
    path = write(tmp_path, task, rows)
    with pytest.raises(DataError, match=rf"{task}.tsv, line 2, field '{field}'"):
        dataset(path, task, tok)[1]
    assert dataset(path, task, tok, bad_rows="skip")[1] is None


# ------------------------------------------------------------------------------------------------ 3. long text
URL = "http://example.com/" + "a1b2c3d4e5/" * 270  # about 3000 characters, one "word"
CJK = "这是一个很长的问题" * 223  # about 2000 characters, one "word"


def tiny_model(tok):
    from ofa.model import OFAModel, config_for_arch

    torch.manual_seed(0)
    return OFAModel.from_config(config_for_arch("ofa_test"), tok.dictionary).eval()


def forward(model, batch):
    with torch.no_grad():
        return model(**batch["net_input"])[0]


@pytest.mark.parametrize("text", [URL, CJK], ids=["url", "cjk"])
def test_a_long_one_word_question_is_cut_to_max_src_length_tokens(tmp_path, tok, text):
    rows = vqa_rows(2)
    rows[1]["question"] = text
    path = write(tmp_path, "vqa", rows)
    for split in ("train", "valid"):
        ds = dataset(path, "vqa", tok, split=split, max_src_length=80)
        ex = ds[1]
        assert len(ex["source"]) <= 80 + 2 and ex["source"][0] == tok.dictionary.bos()
        assert ex["source"][-1] == tok.dictionary.eos()
    assert len(tok.encode(" " + text)) > 1024  # without the cut it would overflow the positions
    logits = forward(tiny_model(tok), ds.collater([ds[0], ds[1]]))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("text", [URL, CJK], ids=["url", "cjk"])
def test_long_grounding_text_and_reference_captions_fit_the_model(tmp_path, tok, text):
    rows = refcoco_rows(1)
    rows[0]["text"] = text
    ref = dataset(write(tmp_path, "refcoco", rows), "refcoco", tok, max_src_length=128)
    assert len(ref[0]["source"]) <= 130
    caps = caption_rows(2)
    caps[1]["caption"] = f"{text}&&a square"
    cap = dataset(write(tmp_path, "caption", caps), "caption", tok, split="valid")
    ex = cap[1]
    assert ex["refs"][0] == text.translate(str.maketrans("", "", "/:.")) and len(ex["prev_output_tokens"]) <= 1024
    model = tiny_model(tok)
    assert torch.isfinite(forward(model, ref.collater([ref[0]]))).all()
    assert torch.isfinite(forward(model, cap.collater([cap[0], cap[1]]))).all()


def test_the_long_text_cut_works_with_the_official_gpt2_bpe(tmp_path, bpe_dir):
    gpt2 = load_tokenizer(bpe_dir)
    rows = vqa_rows(2)
    rows[0]["question"], rows[1]["question"] = URL, CJK
    ds = dataset(write(tmp_path, "vqa", rows), "vqa", gpt2, max_src_length=80)
    assert [len(ds[i]["source"]) for i in (0, 1)] == [82, 82]


# ------------------------------------------------------------------------------------------------ 4. line numbers
def test_errors_name_the_line_an_editor_shows_blank_lines_counted(tmp_path):
    rows = refcoco_rows(3)
    rows[2]["region_coord"] = "30,5,10,20"
    lines = [b"\n", tsv_line("refcoco", rows[0]), b"\n", b"   \n", tsv_line("refcoco", rows[1]), b"\n",
             tsv_line("refcoco", rows[2])]
    path = tmp_path / "refcoco.tsv"
    path.write_bytes(b"".join(lines))
    reader = TSVReader(str(path), "refcoco", index_cache=True)
    assert [reader.line_number(g) for g in range(reader.total)] == [2, 5, 7]
    cached = TSVReader(str(path), "refcoco", index_cache=True)  # the cache keeps the line numbers
    assert [cached.line_number(g) for g in range(3)] == [2, 5, 7]
    (err,) = validate_file(str(path), "refcoco")
    assert str(err).startswith(f"{path}, line 7, field 'region_coord': ") and err.row == 2


def test_an_old_pickled_index_cache_is_rebuilt(tmp_path):
    path = write(tmp_path, "caption", caption_rows(2))
    with open(path + ".index", "wb") as f:
        pickle.dump({"size": os.path.getsize(path), "mtime": os.stat(path).st_mtime_ns, "offsets": [0]}, f)
    reader = TSVReader(path, "caption", index_cache=True)
    assert reader.total == 2 and reader.line_number(1) == 2


def test_hdf5_shards_name_the_one_based_row(tmp_path):
    rows = refcoco_rows(3)
    rows[1]["region_coord"] = "10,5,90,20"
    h5 = str(tmp_path / "r.h5")
    tsv_to_hdf5(write(tmp_path, "refcoco", rows), h5, "refcoco")
    (err,) = validate_file(h5, "refcoco")
    assert str(err) == f"{h5}, row 2, field 'region_coord': box '10,5,90,20' is outside the 40x30 image"
    assert open_reader(h5).line_number(1) is None


# ------------------------------------------------------------------------------------------------ 5. ofa-data
def cli_cases(tmp_path):
    good = write(tmp_path, "caption", caption_rows(2))
    missing = str(tmp_path / "missing.tsv")
    return [
        ([], "give a command: convert, validate, hdf5, cider-df"),
        (["valdate", good], "unknown command 'valdate'; did you mean validate?"),
        (["validate", missing, "--task", "caption"], f"{missing}: file not found"),
        (["validate", good, "--task", "refcoc"], "unknown data layout 'refcoc'; did you mean refcoco?"),
        (["validate", good], "the following arguments are required: --task"),
        (["validate", good, "--task", "caption", "--max-pixels", "0"], "--max-pixels must be positive, got 0"),
        (["hdf5", str(tmp_path / "missing.h5"), str(tmp_path / "o.tsv")], "missing.h5: file not found"),
        (["hdf5", good, str(tmp_path / "o.tsv")], "not an HDF5 file"),
        (["hdf5", good, str(tmp_path / "o.h5")], "converting TSV to HDF5 needs --schema"),
        (["hdf5", good, str(tmp_path / "o.h5"), "--schema", "captoin"], "did you mean caption or region_caption?"),
        (["cider-df", missing, "--out", str(tmp_path / "w.p")], "missing.tsv"),
        (["cider-df", good, "--out", str(tmp_path / "w.p"), "--image-col", "-1"], "--image-col must be a 0-based"),
        (["convert", "coco", "--out", str(tmp_path / "o.tsv")], "unknown source kind 'coco'; did you mean "),
    ]


def test_each_command_mistake_is_one_line_and_exit_status_2(tmp_path, capsys):
    for argv, message in cli_cases(tmp_path):
        assert ofa_data(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("ofa-data: error: ") and message in err[-1], (argv, err)
        assert len(err) == 1, err
    assert not any(name.startswith("o.") for name in os.listdir(tmp_path))


def test_help_exits_zero(capsys):
    assert ofa_data(["--help"]) == 0
    assert "ofa-data validate" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ 6. converters
def coco_inputs(tmp_path, images=None, annotations=None):
    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (8, 6), (255, 0, 0)).save(folder / "a.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = {"images": images or [{"id": 1, "file_name": "a.png"}],
            "annotations": annotations or [{"id": 5, "image_id": 1, "caption": "A cat."}]}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    return str(path), str(folder)


@pytest.mark.parametrize("images, annotations, message", [
    ([{"id": 1, "file_name": "a.png"}, {"id": 2}], None,
     "captions.json, row 2, field 'file_name': record lacks 'file_name'"),
    (None, [{"id": 5, "image_id": 1}], "captions.json, row 1, field 'caption': record lacks 'caption'"),
    ([{"id": 1, "file_name": "broken.png"}], None, "captions.json, row 1, field 'image': COCO image 1: image "),
])
def test_a_bad_converter_input_is_one_line_naming_file_and_item_and_nothing_is_written(
        tmp_path, capsys, images, annotations, message):
    captions, folder = coco_inputs(tmp_path, images, annotations)
    out = tmp_path / "out.tsv"
    out.write_text("the previous good file\n")
    argv = ["convert", "coco_caption", "--out", str(out), "--captions", captions, "--images", folder, "--split", "val"]
    assert ofa_data(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ofa-data: error: {tmp_path}") and message in err[0], err
    assert out.read_text() == "the previous good file\n"  # written atomically: the old file stays whole
    assert sorted(os.listdir(tmp_path)) == ["captions.json", "img", "out.tsv"]


def test_a_vqa_question_without_its_text_is_named(tmp_path, capsys):
    folder = tmp_path / "img"
    folder.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="JPEG")
    (folder / "000000000042.jpg").write_bytes(buf.getvalue())
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 42, "question": "what?"},
                                                   {"question_id": 2, "image_id": 42}]}))
    out = tmp_path / "vqa.tsv"
    assert ofa_data(["convert", "vqa", "--out", str(out), "--questions", str(questions),
                     "--images", str(folder)]) == 2
    assert f"{questions}, row 2, field 'question': record lacks 'question'" in capsys.readouterr().err
    assert not out.exists()
