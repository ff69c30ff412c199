"""The grounding controls (``experiments/grounding_control.py``): each control split refers to the objects its
rule picks (the main object, the clearly smallest one, every colour-unique one) with the scene's boxes,
and the coordinate errors compare against the mean training box."""
import json

import pytest

from experiments import grounding_control as gc
from ofa_synth.writer import main as synth_main


def _rows(path):
    return [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8") if line.strip()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    data = tmp_path_factory.mktemp("bench")
    assert synth_main([str(data), "--num-images", "30", "--seed", "2", "--image-size", "64"]) == 0
    (data / "tok").mkdir()
    (data / "tok" / "dict.txt").write_text("a 1\n")
    return data


def _written(bench, out, name):
    """Per split: (counts, the control's rows, the scenes, the benchmark's image column per image id)."""
    counts = gc.write_control_split(bench, out, name)
    assert (out / "tok" / "dict.txt").exists() and (out / "manifest.json").exists()
    for split in ("train", "valid", "test"):
        rows = _rows(out / f"refcoco_{split}.tsv")
        scenes = {str(s["image_id"]): s for s in map(json.loads, open(bench / f"scenes_{split}.jsonl"))}
        images = {r[1]: r[4] for r in _rows(bench / f"refcoco_{split}.tsv")}
        assert counts[split] == len(rows)
        assert all(image == images[image_id] for _, image_id, _, _, image in rows)
        yield rows, scenes, images


def _referred(scene, uid, box):
    k = int(uid.rsplit("_", 1)[1])
    assert box == ",".join(map(str, scene["objects"][k]["box"]))
    return k


def test_biggest_control_boxes_the_main_object_once_per_image(bench, tmp_path):
    for rows, scenes, images in _written(bench, tmp_path / "c", "biggest"):
        assert sorted(r[1] for r in rows) == sorted(images)
        for uid, image_id, text, box, _ in rows:
            s = scenes[image_id]
            assert text == "the biggest object" and _referred(s, uid, box) == s["main"]
            assert all(s["objects"][s["main"]]["area"] > o["area"] for k, o in enumerate(s["objects"]) if k != s["main"])


def test_smallest_control_keeps_only_images_with_a_clearly_smallest_object(bench, tmp_path):
    kept = 0
    for rows, scenes, images in _written(bench, tmp_path / "c", "smallest"):
        by_image = {r[1]: r for r in rows}
        assert len(by_image) == len(rows)
        for image_id in images:
            areas = sorted(o["area"] for o in scenes[image_id]["objects"])
            clear = areas[1] >= gc.CLEAR_MARGIN * areas[0]
            assert (image_id in by_image) == clear
            if clear:
                uid, _, text, box, _ = by_image[image_id]
                k = _referred(scenes[image_id], uid, box)
                assert text == "the smallest object" and scenes[image_id]["objects"][k]["area"] == areas[0]
        kept += len(rows)
    assert kept > 0


def test_colour_control_names_every_object_of_a_colour_unique_in_its_scene(bench, tmp_path):
    for rows, scenes, images in _written(bench, tmp_path / "c", "colour"):
        got = {(r[1], _referred(scenes[r[1]], r[0], r[3]), r[2]) for r in rows}
        want = set()
        for image_id in images:
            objs = scenes[image_id]["objects"]
            want |= {(image_id, k, f"the {o['color']} object") for k, o in enumerate(objs)
                     if [p["color"] for p in objs].count(o["color"]) == 1}
        assert got == want and len(got) == len(rows)


def test_unknown_control_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="unknown control.*'tallest'.*biggest, smallest, colour"):
        gc.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--controls", "referring,tallest"])


def test_coordinate_errors_against_the_mean_training_box(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("a\t0\tt\t0,0,10,10\tx\nb\t0\tt\t20,20,30,30\tx\n")
    test = tmp_path / "test.tsv"
    test.write_text("c\t0\tt\t0,0,10,10\tx\n")
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps([{"uniq_id": "c", "box": [1, 2, 13, 10]}]))
    got = gc.coordinate_errors(pred, test, train)
    assert got["model"] == [1, 2, 3, 0]
    assert got["mean_box"] == [10, 10, 10, 10]      # mean box 10,10,20,20
