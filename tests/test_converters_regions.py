"""The detection and region-caption converters (``coco_detection``, ``refcoco_regions``, ``vg_regions``).

Every test builds tiny inputs in the real formats by hand in tmp_path (PIL images, COCO instances JSON, a refs
list, a VG region_descriptions.json) and checks the written rows exactly; the files written pass
``ofa-data validate``.
"""
from __future__ import annotations

import base64
import json
import os

import pytest
from PIL import Image

from ofa.data_utils.converters import CONVERTERS, main
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import get_schema, parse_box, parse_detection_boxes
from ofa.data_utils.readers import open_reader
from ofa.data_utils.validate import validate_file
from ofa.errors import ConfigError


# ----------------------------------------------------------------------------------------------- helpers
def image(path, size, color=(200, 30, 30)):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.new("RGB", size, color).save(str(path), format="JPEG" if str(path).endswith(".jpg") else "PNG")
    return open(path, "rb").read()


def dump(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def rows_of(path, layout):
    """The rows as dicts, the image column replaced by its decoded bytes."""
    columns = get_schema(layout).columns
    with open(path, encoding="utf-8", newline="\n") as f:
        text = f.read()
    assert text == "" or text.endswith("\n")
    rows = [dict(zip(columns, line.split("\t"))) for line in text.split("\n")[:-1]]
    assert all(len(r) == len(columns) for r in rows)
    for r in rows:
        r["image"] = base64.b64decode(r["image"])
    return rows


def text_of(rows):
    return [{k: v for k, v in r.items() if k != "image"} for r in rows]


def assert_valid(path, layout):
    assert [str(e) for e in validate_file(path, layout)] == []


def assert_fails(call, out, *parts):
    """``call()`` raises one ``DataError`` line holding every part, and leaves no output file behind."""
    with pytest.raises(DataError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(os.path.dirname(out)) if ".partial" in n]
    return e.value


# ----------------------------------------------------------------------------------------------- coco_detection
@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "val2017"
    data = {1: image(root / "000000000001.jpg", (64, 48)), 2: image(root / "000000000002.png", (40, 40)),
            3: image(root / "000000000003.png", (32, 32))}
    instances = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "000000000002.png", "width": 40, "height": 40},
                   {"id": 3, "file_name": "000000000003.png", "width": 32, "height": 32}],  # no annotations
        "annotations": [
            {"id": 100, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 15], "iscrowd": 0, "area": 450},
            {"id": 101, "image_id": 2, "category_id": 18, "bbox": [0, 0, 40, 40], "iscrowd": 0, "area": 1600},
            {"id": 102, "image_id": 1, "category_id": 90, "bbox": [1.5, 2.25, 3.1, 4.2], "iscrowd": 0, "area": 13},
            {"id": 103, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "iscrowd": 1, "area": 400},
            {"id": 104, "image_id": 2, "category_id": 18, "bbox": [3, 3, 0, 7], "iscrowd": 0, "area": 0},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "tooth\tbrush"}],
    }
    return {"images": str(root), "instances": dump(tmp_path / "instances_val2017.json", instances),
            "data": instances, "bytes": data, "tmp": tmp_path}


PERSON_AND_BRUSH = "10,20,40,35,1,person&&1.5,2.25,4.6,6.45,90,tooth brush"


def test_coco_detection_writes_one_row_per_image_with_x0y0x1y1_boxes_and_empty_boxes_for_no_objects(coco):
    out = str(coco["tmp"] / "detection.tsv")
    n = CONVERTERS["coco_detection"](out, coco["instances"], coco["images"])
    assert n == 3 and n.skipped_rows == 0
    assert n.dropped == {"crowd annotations (--keep-crowd keeps them)": 1, "boxes with a zero width or height": 1,
                         "images without objects (--skip-empty)": 0}
    rows = rows_of(out, "detection")
    assert text_of(rows) == [{"uniq_id": "1", "boxes": PERSON_AND_BRUSH},
                             {"uniq_id": "2", "boxes": "0,0,40,40,18,dog"},
                             {"uniq_id": "3", "boxes": ""}]
    assert [r["image"] for r in rows] == [coco["bytes"][i] for i in (1, 2, 3)]  # the original bytes
    assert parse_detection_boxes(rows[0]["boxes"]) == [((10.0, 20.0, 40.0, 35.0), 1, "person"),
                                                       ((1.5, 2.25, 4.6, 6.45), 90, "tooth brush")]
    assert_valid(out, "detection")
    reader = open_reader(out, schema="detection")
    assert reader.total == 3
    # the class list for --class-names, in category-id order, next to the TSV
    assert n.extra_files == (str(coco["tmp"] / "detection.classes.txt"),)
    assert open(n.extra_files[0]).read() == "person\ndog\ntooth brush\n"


def test_coco_detection_keep_crowd_and_skip_empty(coco):
    out = str(coco["tmp"] / "detection.tsv")
    n = CONVERTERS["coco_detection"](out, coco["instances"], coco["images"], keep_crowd=True, skip_empty=True)
    assert n == 2 and n.dropped["images without objects (--skip-empty)"] == 1
    assert n.dropped["crowd annotations (--keep-crowd keeps them)"] == 0
    assert text_of(rows_of(out, "detection")) == [
        {"uniq_id": "1", "boxes": PERSON_AND_BRUSH + "&&5,5,25,25,1,person"},
        {"uniq_id": "2", "boxes": "0,0,40,40,18,dog"}]
    assert_valid(out, "detection")


def _instances_with(data, part, index, **change):
    data = json.loads(json.dumps(data))
    if index is None:
        data[part].append(change)
    else:
        data[part][index].update(change)
    return data


@pytest.mark.parametrize("part,index,change,row,field,words", [
    ("annotations", 2, {"category_id": 7}, 3, "category_id", "category 7 is not in the categories"),
    ("annotations", 1, {"image_id": 99}, 2, "image_id", "image 99 is not in the images"),
    ("annotations", 0, {"bbox": [1, 2, 3]}, 1, "bbox", "is not 4 numbers"),
    ("annotations", 0, {"bbox": [1, 2, "3", 4]}, 1, "bbox", "is not 4 numbers"),
    ("annotations", 4, {"bbox": [1, 2, -3, 4]}, 5, "bbox", "negative width or height"),
    ("categories", 1, {"name": "hot && dog"}, 2, "name", "holds '&&'"),
    ("categories", 2, {"name": " \t "}, 3, "name", "the name is empty"),
    ("images", None, {"id": 2, "file_name": "x.png"}, 4, "id", "image id 2 appears twice"),
])
def test_coco_detection_bad_input_names_file_row_and_field_and_writes_nothing(coco, part, index, change, row,
                                                                              field, words):
    bad = dump(coco["tmp"] / "instances_bad.json", _instances_with(coco["data"], part, index, **change))
    out = str(coco["tmp"] / "detection.tsv")
    e = assert_fails(lambda: CONVERTERS["coco_detection"](out, bad, coco["images"]), out,
                     "instances_bad.json", f"row {row}", f"field '{field}'", words)
    assert e.path == bad and e.row == row - 1 and e.field == field


def test_coco_detection_missing_image_fails_or_is_skipped_and_counted(coco):
    os.remove(os.path.join(coco["images"], "000000000002.png"))
    out = str(coco["tmp"] / "detection.tsv")
    assert_fails(lambda: CONVERTERS["coco_detection"](out, coco["instances"], coco["images"]), out,
                 "instances_val2017.json, row 2, field 'image'", "COCO image 2", "is missing")
    n = CONVERTERS["coco_detection"](out, coco["instances"], coco["images"], skip_bad=True)
    assert n == 2 and n.skipped_rows == 1 and n.bad_images == 1
    assert [r["uniq_id"] for r in rows_of(out, "detection")] == ["1", "3"]


# ----------------------------------------------------------------------------------------------- refcoco_regions
@pytest.fixture
def refs(tmp_path):
    root = tmp_path / "train2014"
    data = {1: image(root / "COCO_train2014_000000000001.jpg", (64, 48)),
            2: image(root / "COCO_train2014_000000000002.jpg", (40, 40), (0, 90, 200))}
    instances = dump(tmp_path / "instances.json", {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 40, "height": 40}],
        "annotations": [{"id": 100, "image_id": 1, "bbox": [10, 20, 30, 15], "category_id": 1},
                        {"id": 101, "image_id": 1, "bbox": [1.5, 2.25, 3.1, 4.2], "category_id": 1},
                        {"id": 200, "image_id": 2, "bbox": [0, 0, 40, 40], "category_id": 2}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]})
    ref_list = [
        {"ref_id": 0, "ann_id": 100, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"sent": "Man on the LEFT!", "sent_id": 1000},
                       {"sent": "guy && friend,\tin red", "sent_id": 1001}]},
        {"ref_id": 1, "ann_id": 200, "image_id": 2, "split": "train", "category_id": 2,
         "sentences": [{"sent": "whole picture", "sent_id": 2000}]},
        {"ref_id": 2, "ann_id": 101, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"raw": "Tiny thing."}]},
    ]
    return {"images": str(root), "instances": instances, "refs": dump(tmp_path / "refs.json", ref_list),
            "list": ref_list, "bytes": data, "tmp": tmp_path}


def test_refcoco_regions_one_row_per_sentence_cleaned_with_the_annotation_box(refs):
    out = str(refs["tmp"] / "region_val.tsv")
    n = CONVERTERS["refcoco_regions"](out, refs["refs"], refs["instances"], refs["images"], "val")
    assert n == 3
    rows = rows_of(out, "region_caption")
    assert text_of(rows) == [  # caption_text removes '&', so no caption can hold the '&&' separator
        {"uniq_id": "1000", "image_id": "1", "caption": "man on the left", "region_coord": "10,20,40,35"},
        {"uniq_id": "1001", "image_id": "1", "caption": "guy friend in red", "region_coord": "10,20,40,35"},
        {"uniq_id": "2_0", "image_id": "1", "caption": "tiny thing", "region_coord": "1.5,2.25,4.6,6.45"}]
    assert all(r["image"] == refs["bytes"][1] for r in rows)
    assert parse_box(rows[2]["region_coord"]) == (1.5, 2.25, 4.6, 6.45)
    assert_valid(out, "region_caption")


def test_refcoco_regions_join_refs_writes_one_row_per_ref_with_ampersand_joined_references(refs):
    out = str(refs["tmp"] / "region_val.tsv")
    assert CONVERTERS["refcoco_regions"](out, refs["refs"], refs["instances"], refs["images"], "val",
                                         join_refs=True) == 2
    assert text_of(rows_of(out, "region_caption")) == [
        {"uniq_id": "0", "image_id": "1", "caption": "man on the left&&guy friend in red",
         "region_coord": "10,20,40,35"},
        {"uniq_id": "2", "image_id": "1", "caption": "tiny thing", "region_coord": "1.5,2.25,4.6,6.45"}]
    assert_valid(out, "region_caption")


@pytest.mark.parametrize("ref,field,words", [
    ({"ref_id": 9, "ann_id": 999, "image_id": 1, "split": "val", "sentences": [{"sent": "x"}]}, "ann_id",
     "annotation 999 is not in"),
    ({"ref_id": 9, "ann_id": 100, "image_id": 1, "split": "val", "sentences": [{"sent": "?!"}]}, "sentences",
     "sentence 0 ('?!') is empty after cleaning"),
    ({"ref_id": 9, "ann_id": 100, "image_id": 2, "split": "val", "sentences": [{"sent": "x"}]}, "image_id",
     "annotation 100 belongs to image 1, not 2"),
])
def test_refcoco_regions_bad_ref_names_file_row_and_field(refs, ref, field, words):
    bad = dump(refs["tmp"] / "refs_bad.json", refs["list"] + [ref])
    out = str(refs["tmp"] / "region.tsv")
    assert_fails(lambda: CONVERTERS["refcoco_regions"](out, bad, refs["instances"], refs["images"], "val"), out,
                 "refs_bad.json", "row 4", f"field '{field}'", words)


def test_refcoco_regions_unknown_split_is_an_error(refs):
    out = str(refs["tmp"] / "region.tsv")
    assert_fails(lambda: CONVERTERS["refcoco_regions"](out, refs["refs"], refs["instances"], refs["images"], "testA"),
                 out, "refs.json, field 'split': no refs have split 'testA'")


# ----------------------------------------------------------------------------------------------- vg_regions
@pytest.fixture
def vg(tmp_path):
    root = tmp_path / "vg"
    data = {1: image(root / "1.jpg", (64, 48)), 2: image(root / "VG_100K_2" / "2.jpg", (40, 30), (9, 9, 200)),
            3: image(root / "3.jpg", (32, 32), (9, 200, 9))}

    def region(rid, iid, phrase, x, y, w, h):
        return {"region_id": rid, "image_id": iid, "phrase": phrase, "x": x, "y": y, "width": w, "height": h}

    records = [
        {"id": 1, "regions": [region(11, 1, "A man, riding a Horse.", 10, 5, 20, 10),
                              region(12, 1, "the sky", 50, -2, 30, 12),  # runs past the right and top edges
                              region(13, 1, "speck", 3, 3, 0.5, 4),  # below --min-size 1
                              region(14, 1, "!!!", 1, 1, 5, 5),  # empty after cleaning
                              region(15, 1, "off the edge", 70, 10, 5, 5)]},  # wholly outside the 64 px image
        {"id": 2, "regions": [region(21, 2, "red\tcar", 0, 0, 40, 30), region(22, 2, "wheel", 1.25, 2.5, 3, 4)]},
        {"id": 3, "regions": [region(31, 3, "tree", 2, 2, 10, 10)]},
    ]
    return {"images": str(root), "regions": dump(tmp_path / "region_descriptions.json", records),
            "records": records, "bytes": data, "tmp": tmp_path}


def _vg_row(uniq, image_id, caption, coord):
    return {"uniq_id": str(uniq), "image_id": str(image_id), "caption": caption, "region_coord": coord}


VG_ROWS = {11: _vg_row(11, 1, "a man riding a horse", "10,5,30,15"), 12: _vg_row(12, 1, "the sky", "50,0,64,10"),
           21: _vg_row(21, 2, "red car", "0,0,40,30"), 22: _vg_row(22, 2, "wheel", "1.25,2.5,4.25,6.5"),
           31: _vg_row(31, 3, "tree", "2,2,12,12")}


def test_vg_regions_one_row_per_region_clipped_to_the_image_and_drops_counted(vg):
    out = str(vg["tmp"] / "vg.tsv")
    n = CONVERTERS["vg_regions"](out, vg["regions"], vg["images"])
    assert n == 5
    assert n.dropped == {"regions below --min-size": 1, "regions with no area inside the image": 1,
                         "regions with an empty phrase": 1, "regions past --max-regions-per-image": 0}
    rows = rows_of(out, "region_caption")
    assert text_of(rows) == [VG_ROWS[k] for k in (11, 12, 21, 22, 31)]
    assert [r["image"] for r in rows] == [vg["bytes"][i] for i in (1, 1, 2, 2, 3)]  # 2.jpg found in VG_100K_2/
    assert_valid(out, "region_caption")


def test_vg_regions_min_size_and_max_regions_per_image(vg):
    out = str(vg["tmp"] / "vg.tsv")
    n = CONVERTERS["vg_regions"](out, vg["regions"], vg["images"], min_size=0)
    assert n == 6 and text_of(rows_of(out, "region_caption"))[2] == _vg_row(13, 1, "speck", "3,3,3.5,7")
    n = CONVERTERS["vg_regions"](out, vg["regions"], vg["images"], min_size=5)
    assert n == 4 and n.dropped["regions below --min-size"] == 2  # 13 (0.5 wide) and 22 (3 x 4)
    assert [r["uniq_id"] for r in rows_of(out, "region_caption")] == ["11", "12", "21", "31"]
    n = CONVERTERS["vg_regions"](out, vg["regions"], vg["images"], max_regions_per_image=1)
    assert n == 3 and n.dropped["regions past --max-regions-per-image"] == 2
    assert text_of(rows_of(out, "region_caption")) == [VG_ROWS[k] for k in (11, 21, 31)]


def test_vg_regions_ids_file_selects_images_and_an_unknown_id_names_its_line(vg):
    ids = vg["tmp"] / "val_ids.txt"
    ids.write_text("3\n\n2\n")
    out = str(vg["tmp"] / "vg.tsv")
    assert CONVERTERS["vg_regions"](out, vg["regions"], vg["images"], ids=str(ids)) == 3
    assert text_of(rows_of(out, "region_caption")) == [VG_ROWS[k] for k in (21, 22, 31)]  # descriptions order
    os.remove(out)
    ids.write_text("3\n\n77\n88\n")
    assert_fails(lambda: CONVERTERS["vg_regions"](out, vg["regions"], vg["images"], ids=str(ids)), out,
                 "val_ids.txt, line 3: 2 image ids of the ids file are not in", "(first: '77')")


def test_vg_regions_image_data_names_files_by_url_basename(vg):
    other = vg["tmp"] / "elsewhere"
    photo = image(other / "VG_100K" / "photo_one.jpg", (64, 48), (120, 120, 0))
    image(other / "2.jpg", (40, 30))
    data = dump(vg["tmp"] / "image_data.json", [
        {"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K/photo_one.jpg", "width": 64},
        {"id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg"}])
    out = str(vg["tmp"] / "vg.tsv")
    n = CONVERTERS["vg_regions"](out, vg["regions"], str(other), image_data=data, ids=None, skip_bad=True)
    assert n == 4 and n.skipped_rows == 1 and n.bad_images == 1  # image 3 is not in the other folder
    assert rows_of(out, "region_caption")[0]["image"] == photo


@pytest.mark.parametrize("change,field,words", [
    ({"width": "wide"}, "width", "image 2, region 22: width 'wide' is not a finite number"),
    ({"height": -4}, "height", "image 2, region 22: negative width or height"),
    ({"region_id": 11}, "region_id", "region id 11 is not unique"),
    ({"phrase": None}, "phrase", "lacks 'phrase'"),
    ({"image_id": 3}, "image_id", "image 2, region 22 names image 3"),
])
def test_vg_regions_bad_region_names_file_row_and_field_and_writes_nothing(vg, change, field, words):
    records = json.loads(json.dumps(vg["records"]))
    records[1]["regions"][1].update(change)
    bad = dump(vg["tmp"] / "regions_bad.json", records)
    out = str(vg["tmp"] / "vg.tsv")
    e = assert_fails(lambda: CONVERTERS["vg_regions"](out, bad, vg["images"]), out,
                     "regions_bad.json", "row 2", f"field '{field}'", words)
    assert e.row == 1


def test_vg_regions_duplicate_image_is_an_error(vg):
    bad = dump(vg["tmp"] / "regions_bad.json", vg["records"] + [{"id": 1, "regions": []}])
    out = str(vg["tmp"] / "vg.tsv")
    assert_fails(lambda: CONVERTERS["vg_regions"](out, bad, vg["images"]), out,
                 "regions_bad.json, row 4, field 'id': image id 1 appears twice")


# ----------------------------------------------------------------------------------------------- the CLI
def test_cli_runs_each_new_source_kind_and_prints_what_it_left_out(coco, refs, vg, capsys):
    ids = vg["tmp"] / "ids.txt"
    ids.write_text("1\n")
    cases = {
        "coco_detection": (["--instances", coco["instances"], "--images", coco["images"], "--skip-empty",
                            "--keep-crowd"], 2, ["left out 1 boxes with a zero width or height",
                                                 "left out 1 images without objects (--skip-empty)"]),
        "refcoco_regions": (["--refs", refs["refs"], "--instances", refs["instances"], "--images", refs["images"],
                             "--split", "val", "--join-refs"], 2, []),
        "vg_regions": (["--regions", vg["regions"], "--images", vg["images"], "--ids", str(ids), "--min-size",
                        "0", "--max-regions-per-image", "2"], 2,
                       ["left out 1 regions with an empty phrase", "left out 1 regions past"]),
    }
    for kind, (args, count, lines) in cases.items():
        out = str(coco["tmp"] / f"cli_{kind}.tsv")
        assert main([kind, "--out", out] + args) == 0
        printed = capsys.readouterr().out
        assert f"wrote {count} rows to {out}" in printed
        for line in lines:
            assert line in printed, (line, printed)
        assert "left out 0" not in printed
        assert_valid(out, "detection" if kind == "coco_detection" else "region_caption")
    with pytest.raises(ConfigError, match="unrecognized arguments: --join-refs"):  # one phrase per region
        main(["vg_regions", "--out", "x.tsv", "--regions", vg["regions"], "--images", vg["images"], "--join-refs"])
    assert set(CONVERTERS) >= {"coco_detection", "refcoco_regions", "vg_regions"}
