"""Converters from user-held dataset layouts to the official OFA TSV files (ofa.data_utils.converters).

Every test builds tiny inputs by hand in tmp_path (PIL images, JSON/JSONL, pickles of plain dicts) and checks
the written rows exactly.
"""
from __future__ import annotations

import base64
import json
import os
import pickle

import pytest
from PIL import Image

from ofa.data_utils.cli import main as ofa_data
from ofa.data_utils.converters import CONVERTERS, main
from ofa.data_utils.converters.safe_pickle import safe_load
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema, parse_answers, parse_box
from ofa.data_utils.images import decode_b64


# ----------------------------------------------------------------------------------------------- helpers
def make_image(path, color=(255, 0, 0), size=(8, 6), fmt=None):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    fmt = fmt or ("JPEG" if str(path).lower().endswith((".jpg", ".jpeg")) else "PNG")
    Image.new("RGB", size, color).save(str(path), format=fmt)
    with open(path, "rb") as f:
        return f.read()


def write_json(path, data):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return str(path)


def read_rows(path, schema_name):
    columns = get_schema(schema_name).columns
    with open(path, encoding="utf-8", newline="\n") as f:
        lines = f.read().split("\n")
    assert lines[-1] == ""  # every row ends with a newline
    rows = [line.split("\t") for line in lines[:-1]]
    for r in rows:
        assert len(r) == len(columns)
    return [dict(zip(columns, r)) for r in rows]


def image_bytes(b64):
    return base64.b64decode(b64)


def without_image(rows, column="image"):
    return [{k: v for k, v in r.items() if k != column} for r in rows]


# ----------------------------------------------------------------------------------------------- coco_caption
@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "coco"
    b1 = make_image(images / "COCO_val2014_000000000001.jpg", (200, 10, 10))
    b2 = make_image(images / "COCO_val2014_000000000002.png", (10, 200, 10))
    captions = write_json(tmp_path / "captions.json", {
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
                   {"id": 2, "file_name": "COCO_val2014_000000000002.png"}],
        "annotations": [
            {"id": 11, "image_id": 1, "caption": "A man riding a Horse."},
            {"id": 12, "image_id": 2, "caption": "Two dogs,\tplaying\nin the park!"},
            {"id": 13, "image_id": 1, "caption": "A person on a horse's back"},
            {"id": 14, "image_id": 2, "caption": "dogs   running"},
        ]})
    return {"images": str(images), "captions": captions, "bytes": {1: b1, 2: b2}}


def test_coco_caption_train_writes_one_row_per_caption_lowercase_without_punctuation(coco, tmp_path):
    out = str(tmp_path / "caption_train.tsv")
    n = CONVERTERS["coco_caption"](out, coco["images"], captions=coco["captions"], split="train")
    assert n == 4
    rows = read_rows(out, "caption")
    assert without_image(rows) == [
        {"uniq_id": "11", "image_id": "1", "caption": "a man riding a horse", "predicted_objects": ""},
        {"uniq_id": "13", "image_id": "1", "caption": "a person on a horses back", "predicted_objects": ""},
        {"uniq_id": "12", "image_id": "2", "caption": "two dogs playing in the park", "predicted_objects": ""},
        {"uniq_id": "14", "image_id": "2", "caption": "dogs running", "predicted_objects": ""},
    ]
    assert len({r["uniq_id"] for r in rows}) == len(rows)
    for r in rows:
        assert image_bytes(r["image"]) == coco["bytes"][int(r["image_id"])]


def test_coco_caption_val_writes_one_row_per_image_with_references_joined_by_ampersands(coco, tmp_path):
    out = str(tmp_path / "caption_val.tsv")
    assert CONVERTERS["coco_caption"](out, coco["images"], captions=coco["captions"], split="val") == 2
    rows = read_rows(out, "caption")
    assert without_image(rows) == [
        {"uniq_id": "1", "image_id": "1", "caption": "a man riding a horse&&a person on a horses back",
         "predicted_objects": ""},
        {"uniq_id": "2", "image_id": "2", "caption": "two dogs playing in the park&&dogs running",
         "predicted_objects": ""},
    ]
    assert image_bytes(rows[1]["image"]) == coco["bytes"][2]


@pytest.fixture
def karpathy(tmp_path):
    images = tmp_path / "coco"
    data = {}
    for cid, sub, split in [(5, "train2014", "train"), (6, "val2014", "restval"), (7, "val2014", "val"),
                            (8, "val2014", "test")]:
        name = f"COCO_{sub}_{cid:012d}.jpg"
        data[cid] = make_image(images / sub / name, (cid * 20, 0, 0))
    kfile = write_json(tmp_path / "dataset_coco.json", {"images": [
        {"filepath": "train2014", "filename": "COCO_train2014_000000000005.jpg", "cocoid": 5, "split": "train",
         "sentences": [{"raw": "A cat.", "sentid": 50}, {"raw": "The CAT sleeps!", "sentid": 51}]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000006.jpg", "cocoid": 6, "split": "restval",
         "sentences": [{"raw": "A bus, red.", "sentid": 60}]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000007.jpg", "cocoid": 7, "split": "val",
         "sentences": [{"raw": "A tree.", "sentid": 70}, {"raw": "Green tree", "sentid": 71}]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000008.jpg", "cocoid": 8, "split": "test",
         "sentences": [{"raw": "A boat?", "sentid": 80}, {"raw": "a Boat on water", "sentid": 81}]},
    ]})
    return {"images": str(images), "karpathy": kfile, "bytes": data}


def test_coco_caption_karpathy_train_includes_restval_and_excludes_val_test(karpathy, tmp_path):
    out = str(tmp_path / "train.tsv")
    assert CONVERTERS["coco_caption"](out, karpathy["images"], karpathy=karpathy["karpathy"], split="train") == 3
    rows = read_rows(out, "caption")
    assert without_image(rows) == [
        {"uniq_id": "50", "image_id": "5", "caption": "a cat", "predicted_objects": ""},
        {"uniq_id": "51", "image_id": "5", "caption": "the cat sleeps", "predicted_objects": ""},
        {"uniq_id": "60", "image_id": "6", "caption": "a bus red", "predicted_objects": ""},
    ]
    assert [image_bytes(r["image"]) for r in rows] == [karpathy["bytes"][5]] * 2 + [karpathy["bytes"][6]]


def test_coco_caption_karpathy_test_split_joins_stripped_lowercase_references(karpathy, tmp_path):
    out = str(tmp_path / "test.tsv")
    assert CONVERTERS["coco_caption"](out, karpathy["images"], karpathy=karpathy["karpathy"], split="test") == 1
    rows = read_rows(out, "caption")
    assert without_image(rows) == [
        {"uniq_id": "8", "image_id": "8", "caption": "a boat&&a boat on water", "predicted_objects": ""}]
    assert image_bytes(rows[0]["image"]) == karpathy["bytes"][8]


def test_coco_caption_karpathy_split_takes_captions_from_coco_json_when_given(karpathy, tmp_path):
    captions = write_json(tmp_path / "captions_val2014.json", {
        "images": [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg"}],
        "annotations": [{"id": 700, "image_id": 7, "caption": "Tall tree."},
                        {"id": 701, "image_id": 7, "caption": "A TREE in a field"}]})
    out = str(tmp_path / "val.tsv")
    assert CONVERTERS["coco_caption"](out, karpathy["images"], captions=captions, karpathy=karpathy["karpathy"],
                                      split="val") == 1
    assert without_image(read_rows(out, "caption")) == [
        {"uniq_id": "7", "image_id": "7", "caption": "tall tree&&a tree in a field", "predicted_objects": ""}]
    # a Karpathy image whose captions the given JSON lacks is an error naming it
    with pytest.raises(DataError, match="COCO image 5 of the Karpathy split has no captions"):
        CONVERTERS["coco_caption"](out, karpathy["images"], captions=captions, karpathy=karpathy["karpathy"],
                                   split="train")


def test_coco_caption_missing_image_raises_dataerror_naming_record_and_path(coco, tmp_path):
    os.remove(os.path.join(coco["images"], "COCO_val2014_000000000002.png"))
    out = str(tmp_path / "caption.tsv")
    with pytest.raises(DataError) as e:
        CONVERTERS["coco_caption"](out, coco["images"], captions=coco["captions"], split="val")
    msg = str(e.value)
    assert "COCO image 2" in msg and "COCO_val2014_000000000002.png" in msg and "is missing" in msg
    assert e.value.path == coco["captions"] and e.value.row == 1 and e.value.field == "image"
    assert not os.path.exists(out)  # nothing half-written


def test_coco_caption_skip_bad_drops_every_caption_row_of_a_missing_image_and_counts_them(coco, tmp_path):
    os.remove(os.path.join(coco["images"], "COCO_val2014_000000000001.jpg"))
    out = str(tmp_path / "caption.tsv")
    n = CONVERTERS["coco_caption"](out, coco["images"], captions=coco["captions"], split="train", skip_bad=True)
    assert n == 2 and n.skipped_rows == 2 and n.bad_images == 1
    assert [r["uniq_id"] for r in read_rows(out, "caption")] == ["12", "14"]


# ----------------------------------------------------------------------------------------------- refcoco
@pytest.fixture
def refcoco(tmp_path):
    images = tmp_path / "train2014"
    b = {1: make_image(images / "COCO_train2014_000000000001.jpg", (0, 0, 255), (64, 48)),
         2: make_image(images / "COCO_train2014_000000000002.jpg", (0, 255, 255), (40, 40))}
    instances = write_json(tmp_path / "instances.json", {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 40, "height": 40}],
        "annotations": [{"id": 100, "image_id": 1, "bbox": [10, 20, 30, 15], "category_id": 1},
                        {"id": 101, "image_id": 1, "bbox": [1.5, 2.25, 3.1, 4.2], "category_id": 1},
                        {"id": 200, "image_id": 2, "bbox": [0, 0, 40, 40], "category_id": 2}]})
    refs = [
        {"ref_id": 0, "ann_id": 100, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"sent": "man on the left", "sent_id": 1000, "raw": "Man on the left"},
                       {"sent": "guy\tin red\n", "sent_id": 1001}]},
        {"ref_id": 1, "ann_id": 200, "image_id": 2, "split": "train", "category_id": 2,
         "sentences": [{"sent": "whole picture", "sent_id": 2000}]},
        {"ref_id": 2, "ann_id": 101, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"sent": "tiny thing"}]},
    ]
    refs_path = tmp_path / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps(refs))
    return {"images": str(images), "instances": instances, "refs": str(refs_path), "refs_list": refs, "bytes": b}


EXPECTED_REFCOCO_VAL = [
    {"uniq_id": "1000", "image_id": "1", "text": "man on the left", "region_coord": "10,20,40,35"},
    {"uniq_id": "1001", "image_id": "1", "text": "guy in red", "region_coord": "10,20,40,35"},
    {"uniq_id": "2_0", "image_id": "1", "text": "tiny thing", "region_coord": "1.5,2.25,4.6,6.45"},
]


def test_refcoco_writes_one_row_per_sentence_with_box_x0y0x1y1_in_original_pixels(refcoco, tmp_path):
    out = str(tmp_path / "refcoco_val.tsv")
    n = CONVERTERS["refcoco"](out, refcoco["refs"], refcoco["instances"], refcoco["images"], "val")
    assert n == 3
    rows = read_rows(out, "refcoco")
    assert without_image(rows) == EXPECTED_REFCOCO_VAL
    assert parse_box(rows[0]["region_coord"]) == (10.0, 20.0, 40.0, 35.0)
    assert all(image_bytes(r["image"]) == refcoco["bytes"][1] for r in rows)
    out2 = str(tmp_path / "refcoco_train.tsv")
    assert CONVERTERS["refcoco"](out2, refcoco["refs"], refcoco["instances"], refcoco["images"], "train") == 1
    assert without_image(read_rows(out2, "refcoco")) == [
        {"uniq_id": "2000", "image_id": "2", "text": "whole picture", "region_coord": "0,0,40,40"}]


def test_refcoco_accepts_refs_json_with_the_same_records(refcoco, tmp_path):
    refs_json = write_json(tmp_path / "refs.json", refcoco["refs_list"])
    out = str(tmp_path / "refcoco_val.tsv")
    assert CONVERTERS["refcoco"](out, refs_json, refcoco["instances"], refcoco["images"], "val") == 3
    assert without_image(read_rows(out, "refcoco")) == EXPECTED_REFCOCO_VAL


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_refs_pickle_of_plain_data_loads_with_every_protocol(refcoco, tmp_path, protocol):
    path = tmp_path / f"refs_p{protocol}.p"
    data = refcoco["refs_list"] + [{"t": (1, 2.5), "s": {3}, "b": True, "n": None}]
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert safe_load(str(path)) == data


class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import builtins
        return (builtins.eval, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_SystemPayload, _EvalPayload])
def test_refcoco_refuses_malicious_refs_pickle_without_running_it(refcoco, tmp_path, payload):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "refs(evil).p"
    # the payload hides inside an otherwise plausible refs list
    evil.write_bytes(pickle.dumps([{"ref_id": 0, "sentences": [{"sent": payload(str(marker))}]}]))
    out = str(tmp_path / "refcoco.tsv")
    with pytest.raises(DataError) as e:
        CONVERTERS["refcoco"](out, str(evil), refcoco["instances"], refcoco["images"], "val")
    assert "refused global" in str(e.value) and str(evil) in str(e.value)
    assert not marker.exists()
    assert not os.path.exists(out)


def test_refcoco_missing_image_raises_dataerror_naming_ref_and_skip_bad_skips_it(refcoco, tmp_path):
    os.remove(os.path.join(refcoco["images"], "COCO_train2014_000000000001.jpg"))
    out = str(tmp_path / "refcoco.tsv")
    with pytest.raises(DataError) as e:
        CONVERTERS["refcoco"](out, refcoco["refs"], refcoco["instances"], refcoco["images"], "val")
    assert "ref 0 (image 1)" in str(e.value) and "COCO_train2014_000000000001.jpg" in str(e.value)
    assert e.value.path == refcoco["refs"] and e.value.row == 0
    n = CONVERTERS["refcoco"](out, refcoco["refs"], refcoco["instances"], refcoco["images"], "val", skip_bad=True)
    assert n == 0 and n.skipped_rows == 3 and n.bad_images == 1
    assert read_rows(out, "refcoco") == []


def test_refcoco_ref_pointing_at_unknown_annotation_raises_dataerror_naming_ref(refcoco, tmp_path):
    refs = refcoco["refs_list"] + [{"ref_id": 9, "ann_id": 999, "image_id": 1, "split": "val",
                                    "sentences": [{"sent": "x"}]}]
    path = write_json(tmp_path / "refs_bad.json", refs)
    with pytest.raises(DataError, match="ref 9: annotation 999") as e:
        CONVERTERS["refcoco"](str(tmp_path / "o.tsv"), path, refcoco["instances"], refcoco["images"], "val")
    assert e.value.row == 3 and e.value.field == "ann_id"


# ----------------------------------------------------------------------------------------------- vqa
@pytest.fixture
def vqa(tmp_path):
    images = tmp_path / "val2014"
    b = {42: make_image(images / "COCO_val2014_000000000042.jpg", (1, 2, 3)),
         43: make_image(images / "COCO_val2014_000000000043.jpg", (4, 5, 6))}
    questions = write_json(tmp_path / "questions.json", {"data_subtype": "val2014", "questions": [
        {"question_id": 420, "image_id": 42, "question": "Is it\tsunny?"},
        {"question_id": 421, "image_id": 42, "question": "How many dogs?"},
        {"question_id": 430, "image_id": 43, "question": "What color?"},
    ]})

    def answers(*texts):
        return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]

    annotations = write_json(tmp_path / "annotations.json", {"annotations": [
        {"question_id": 421, "image_id": 42, "multiple_choice_answer": "2",
         "answers": answers("2", "2", "Two", "2", "two ", "3", "2", "4", "2", "4")},
        {"question_id": 420, "image_id": 42, "multiple_choice_answer": "yes",
         "answers": answers("yes", "no", "yes", "yes", "No", "yes", "yes", "no", "yes", "YES")},
        {"question_id": 430, "image_id": 43, "multiple_choice_answer": "red",
         "answers": answers(*["red"] * 10)},
    ]})
    return {"images": str(images), "questions": questions, "annotations": annotations, "bytes": b}


def test_vqa_answer_confidence_is_min1_count_over_3_per_distinct_normalised_answer(vqa, tmp_path):
    out = str(tmp_path / "vqa_val.tsv")
    assert CONVERTERS["vqa"](out, vqa["questions"], vqa["images"], annotations=vqa["annotations"]) == 3
    rows = read_rows(out, "vqa")
    assert without_image(rows) == [
        {"question_id": "420", "image_id": "42", "question": "Is it sunny?", "answers": "1|!+yes&&1|!+no",
         "predicted_objects": ""},
        # 2 x5 -> 1; two x2 -> 2/3; 4 x2 -> 2/3; 3 x1 -> 1/3 (count descending, ties in first-seen order)
        {"question_id": "421", "image_id": "42", "question": "How many dogs?",
         "answers": "1|!+2&&0.666667|!+two&&0.666667|!+4&&0.333333|!+3", "predicted_objects": ""},
        {"question_id": "430", "image_id": "43", "question": "What color?", "answers": "1|!+red",
         "predicted_objects": ""},
    ]
    assert parse_answers(rows[1]["answers"]) == pytest.approx({"2": 1.0, "two": 2 / 3, "4": 2 / 3, "3": 1 / 3},
                                                              abs=1e-6)
    assert [image_bytes(r["image"]) for r in rows] == [vqa["bytes"][42]] * 2 + [vqa["bytes"][43]]
    assert decode_b64(rows[2]["image"]).size == (8, 6)


def test_vqa_without_annotations_writes_dummy_test_answer(vqa, tmp_path):
    out = str(tmp_path / "vqa_test.tsv")
    assert CONVERTERS["vqa"](out, vqa["questions"], vqa["images"]) == 3
    assert [r["answers"] for r in read_rows(out, "vqa")] == ["1.0|!+no"] * 3


def test_vqa_ans2label_keeps_answers_reaching_min_count_and_writes_pickle_and_json(vqa, tmp_path):
    extra = write_json(tmp_path / "more_annotations.json", {"annotations": [
        {"question_id": 1, "multiple_choice_answer": "Yes", "answers": []},
        {"question_id": 2, "multiple_choice_answer": "red", "answers": []},
        {"question_id": 3, "multiple_choice_answer": "red", "answers": []}]})
    a2l = str(tmp_path / "trainval_ans2label.pkl")
    out = str(tmp_path / "vqa.tsv")
    n = CONVERTERS["vqa"](out, vqa["questions"], vqa["images"], annotations=vqa["annotations"], ans2label_out=a2l,
                          min_answer_count=2, count_annotations=[extra])
    assert n == 3
    expected = {"red": 0, "yes": 1}  # red x3, yes x2; "2" (x1) falls below the threshold
    with open(a2l, "rb") as f:
        assert pickle.load(f) == expected
    with open(str(tmp_path / "trainval_ans2label.json")) as f:
        assert json.load(f) == expected
    # --all-answers keeps every answer seen, multiple-choice or not
    CONVERTERS["vqa"](out, vqa["questions"], vqa["images"], annotations=vqa["annotations"], ans2label_out=a2l,
                      all_answers=True)
    with open(a2l, "rb") as f:
        assert pickle.load(f) == {"2": 0, "red": 1, "yes": 2, "3": 3, "4": 4, "no": 5, "two": 6}


def test_vqa_question_without_annotation_raises_dataerror_naming_question(vqa, tmp_path):
    anns = write_json(tmp_path / "partial.json", {"annotations": [
        {"question_id": 420, "image_id": 42, "multiple_choice_answer": "yes", "answers": []}]})
    with pytest.raises(DataError, match="question 421 has no annotation") as e:
        CONVERTERS["vqa"](str(tmp_path / "o.tsv"), vqa["questions"], vqa["images"], annotations=anns)
    assert e.value.path == vqa["questions"] and e.value.row == 1


def test_vqa_cli_missing_image_fails_naming_question_and_skip_bad_counts_skips(vqa, tmp_path, capsys):
    os.remove(os.path.join(vqa["images"], "COCO_val2014_000000000042.jpg"))
    out = str(tmp_path / "vqa.tsv")
    argv = ["vqa", "--out", out, "--questions", vqa["questions"], "--annotations", vqa["annotations"],
            "--images", vqa["images"]]
    assert ofa_data(["convert"] + argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("ofa-data: error: ")
    assert "question 420 (image 42)" in err and "COCO_val2014_000000000042.jpg" in err and "is missing" in err
    assert not os.path.exists(out)
    assert main(argv + ["--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 1 rows to {out}" in printed
    assert "skipped 2 rows with a missing or corrupt image (1 distinct image files)" in printed
    assert [r["question_id"] for r in read_rows(out, "vqa")] == ["430"]


# ----------------------------------------------------------------------------------------------- image_folder
@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imagenet"
    b = {
        ("tench", "b.jpg"): make_image(root / "tench" / "b.jpg", (9, 9, 9)),
        ("tench", "a.png"): make_image(root / "tench" / "a.png", (8, 8, 8)),
        ("great_white_shark", "x.JPEG"): make_image(root / "great_white_shark" / "x.JPEG", (7, 7, 7)),
        ("a_class", "z.jpg"): make_image(root / "a_class" / "z.jpg", (6, 6, 6)),
    }
    (root / "tench" / "notes.txt").write_text("not an image")
    (root / "README.txt").write_text("a file at the root is not a class")
    return {"root": str(root), "bytes": b}


def test_image_folder_labels_are_one_based_in_sorted_class_order_with_underscores_as_spaces(tree, tmp_path):
    out = str(tmp_path / "imagenet_train.tsv")
    c2l = str(tmp_path / "class2label.pkl")
    assert CONVERTERS["image_folder"](out, tree["root"], class2label_out=c2l) == 4
    rows = read_rows(out, "image_classify")
    assert without_image(rows) == [
        {"label_index": "1", "label_name": "a class"},
        {"label_index": "2", "label_name": "great white shark"},
        {"label_index": "3", "label_name": "tench"},
        {"label_index": "3", "label_name": "tench"},
    ]
    b = tree["bytes"]
    assert [image_bytes(r["image"]) for r in rows] == [b[("a_class", "z.jpg")], b[("great_white_shark", "x.JPEG")],
                                                        b[("tench", "a.png")], b[("tench", "b.jpg")]]
    expected = {"a class": 1, "great white shark": 2, "tench": 3}
    with open(c2l, "rb") as f:
        assert pickle.load(f) == expected
    with open(str(tmp_path / "class2label.json")) as f:
        assert json.load(f) == expected


def test_image_folder_corrupt_image_raises_dataerror_naming_file_and_skip_bad_skips_it(tree, tmp_path):
    bad = os.path.join(tree["root"], "tench", "b.jpg")
    with open(bad, "r+b") as f:  # keep the header, cut the data: a truncated JPEG
        data = f.read()
        f.seek(0)
        f.truncate()
        f.write(data[: len(data) // 2])
    out = str(tmp_path / "o.tsv")
    with pytest.raises(DataError) as e:
        CONVERTERS["image_folder"](out, tree["root"])
    assert "class 'tench' file 'b.jpg'" in str(e.value) and bad in str(e.value) and "corrupt" in str(e.value)
    n = CONVERTERS["image_folder"](out, tree["root"], skip_bad=True)
    assert n == 3 and n.skipped_rows == 1
    assert [r["label_name"] for r in read_rows(out, "image_classify")] == ["a class", "great white shark", "tench"]


# ----------------------------------------------------------------------------------------------- snli_ve
def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture
def snli(tmp_path):
    images = tmp_path / "flickr30k_images"
    b = {"1000092795": make_image(images / "1000092795.jpg", (3, 3, 3)),
         "10002456": make_image(images / "10002456.jpg", (5, 5, 5))}
    jsonl = write_jsonl(tmp_path / "snli_ve_dev.jsonl", [
        {"Flickr30k_ID": "1000092795", "sentence1": "Two young guys with shaggy hair.",
         "sentence2": "Two men are\toutside.", "gold_label": "entailment", "pairID": "1000092795.jpg#0r1e"},
        {"Flickr30k_ID": "1000092795", "sentence1": "Two young guys with shaggy hair.",
         "sentence2": "Two men are asleep.", "gold_label": "contradiction", "pairID": "1000092795.jpg#0r1c"},
        {"Flickr30k_ID": "10002456", "sentence1": "Workers on a building.",
         "sentence2": "People build\na house.", "gold_label": "neutral", "pairID": "10002456.jpg#2r1n"},
    ])
    return {"images": str(images), "jsonl": jsonl, "bytes": b}


def test_snli_ve_maps_premise_to_caption_and_hypothesis_with_pair_ids_and_labels(snli, tmp_path):
    out = str(tmp_path / "snli_ve_dev.tsv")
    assert CONVERTERS["snli_ve"](out, snli["jsonl"], snli["images"]) == 3
    rows = read_rows(out, "snli_ve")
    assert without_image(rows) == [
        {"uniq_id": "1000092795.jpg#0r1e", "image_id": "1000092795", "hypothesis": "Two men are outside.",
         "caption": "Two young guys with shaggy hair.", "label": "entailment"},
        {"uniq_id": "1000092795.jpg#0r1c", "image_id": "1000092795", "hypothesis": "Two men are asleep.",
         "caption": "Two young guys with shaggy hair.", "label": "contradiction"},
        {"uniq_id": "10002456.jpg#2r1n", "image_id": "10002456", "hypothesis": "People build a house.",
         "caption": "Workers on a building.", "label": "neutral"},
    ]
    assert [image_bytes(r["image"]) for r in rows] == [snli["bytes"]["1000092795"]] * 2 + [snli["bytes"]["10002456"]]


def test_snli_ve_missing_image_raises_dataerror_naming_pair_and_skip_bad_skips_it(snli, tmp_path):
    os.remove(os.path.join(snli["images"], "10002456.jpg"))
    out = str(tmp_path / "o.tsv")
    with pytest.raises(DataError) as e:
        CONVERTERS["snli_ve"](out, snli["jsonl"], snli["images"])
    assert "pair 10002456.jpg#2r1n (image 10002456)" in str(e.value) and e.value.row == 2 and e.value.line == 3
    assert str(e.value).startswith(f"{snli['jsonl']}, line 3, field 'image': ")
    n = CONVERTERS["snli_ve"](out, snli["jsonl"], snli["images"], skip_bad=True)
    assert n == 2 and n.skipped_rows == 1
    assert [r["uniq_id"] for r in read_rows(out, "snli_ve")] == ["1000092795.jpg#0r1e", "1000092795.jpg#0r1c"]


def test_snli_ve_unknown_label_and_bad_json_line_raise_dataerror_naming_the_line(snli, tmp_path):
    bad_label = write_jsonl(tmp_path / "bad_label.jsonl", [
        {"Flickr30k_ID": "10002456", "sentence1": "a", "sentence2": "b", "gold_label": "-", "pairID": "p"}])
    with pytest.raises(DataError, match="gold_label '-'") as e:
        CONVERTERS["snli_ve"](str(tmp_path / "o.tsv"), bad_label, snli["images"])
    assert e.value.row == 0 and e.value.field == "gold_label"
    broken = tmp_path / "broken.jsonl"
    broken.write_text(open(snli["jsonl"]).read() + "{not json\n")
    with pytest.raises(DataError, match="broken.jsonl, line 4: not valid JSON") as e:
        CONVERTERS["snli_ve"](str(tmp_path / "o.tsv"), str(broken), snli["images"])
    assert e.value.path == str(broken) and e.value.row == 3 and e.value.line == 4


# ----------------------------------------------------------------------------------------------- common / CLI
def test_registry_exposes_every_source_kind():
    assert set(CONVERTERS) == {"coco_caption", "refcoco", "vqa", "image_folder", "snli_ve", "coco_detection",
                               "refcoco_regions", "vg_regions"}


def test_cli_each_source_writes_rows_and_prints_the_count(coco, refcoco, vqa, tree, snli, tmp_path, capsys):
    cases = {
        "coco_caption": (["--captions", coco["captions"], "--images", coco["images"], "--split", "val"], 2),
        "refcoco": (["--refs", refcoco["refs"], "--instances", refcoco["instances"], "--images",
                     refcoco["images"], "--split", "val"], 3),
        "vqa": (["--questions", vqa["questions"], "--images", vqa["images"]], 3),
        "image_folder": (["--root", tree["root"]], 4),
        "snli_ve": (["--jsonl", snli["jsonl"], "--images", snli["images"]], 3),
    }
    for kind, (args, rows) in cases.items():
        out = str(tmp_path / f"cli_{kind}.tsv")
        assert main([kind, "--out", out] + args) == 0
        assert f"wrote {rows} rows to {out}" in capsys.readouterr().out
        with open(out) as f:
            assert sum(1 for _ in f) == rows


def test_cli_rejects_unknown_source_kind(capsys):
    with pytest.raises(DataError, match="unknown source kind 'vqa2'; did you mean vqa"):
        main(["vqa2", "--out", "x.tsv"])
    assert ofa_data(["convert", "nonsense", "--out", "x.tsv"]) == 2
    assert capsys.readouterr().err.startswith("ofa-data: error: unknown source kind 'nonsense'; choose one of ")


def test_image_names_climbing_out_of_the_image_folder_are_refused(coco, tmp_path):
    make_image(tmp_path / "secret.png")
    captions = write_json(tmp_path / "evil_captions.json", {
        "images": [{"id": 1, "file_name": "../secret.png"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]})
    with pytest.raises(DataError, match="points outside the image folder"):
        CONVERTERS["coco_caption"](str(tmp_path / "o.tsv"), coco["images"], captions=captions)


def test_no_verify_images_still_refuses_missing_files_but_accepts_undecodable_bytes(snli, tmp_path):
    with open(os.path.join(snli["images"], "10002456.jpg"), "wb") as f:
        f.write(b"not an image")
    out = str(tmp_path / "o.tsv")
    with pytest.raises(DataError, match="corrupt"):
        CONVERTERS["snli_ve"](out, snli["jsonl"], snli["images"])
    assert CONVERTERS["snli_ve"](out, snli["jsonl"], snli["images"], verify_images=False) == 3
    assert image_bytes(read_rows(out, "snli_ve")[2]["image"]) == b"not an image"
