"""The grounding control (``scripts/grounding_control.py``): its "biggest object" split boxes the scene's
main object of every image once, and the coordinate errors compare against the mean training box."""
import json

import pytest
from conftest import load_script

from ofa.data_utils.synth import main as synth_main


@pytest.fixture(scope="module")
def gc():
    return load_script("grounding_control")


def _rows(path):
    return [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8") if line.strip()]


def test_biggest_object_split_boxes_the_main_object_once_per_image(gc, tmp_path):
    data = tmp_path / "d"
    assert synth_main([str(data), "--num-images", "30", "--seed", "2", "--image-size", "64"]) == 0
    (data / "tok").mkdir()
    (data / "tok" / "dict.txt").write_text("a 1\n")
    counts = gc.write_biggest_object_split(data, tmp_path / "c")
    for split in ("train", "valid", "test"):
        rows = _rows(tmp_path / "c" / f"refcoco_{split}.tsv")
        scenes = {str(s["image_id"]): s for s in map(json.loads, open(data / f"scenes_{split}.jsonl"))}
        originals = _rows(data / f"refcoco_{split}.tsv")
        assert counts[split] == len(rows) == len({r[1] for r in originals})
        images = {r[1]: r[4] for r in originals}
        for uid, image_id, text, box, image in rows:
            s = scenes[image_id]
            main = s["objects"][s["main"]]
            assert text == gc.CONTROL_TEXT and box == ",".join(map(str, main["box"])) and image == images[image_id]
            assert all(main["area"] > o["area"] for k, o in enumerate(s["objects"]) if k != s["main"])
    assert (tmp_path / "c" / "tok" / "dict.txt").exists() and (tmp_path / "c" / "manifest.json").exists()


def test_coordinate_errors_against_the_mean_training_box(gc, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("a\t0\tt\t0,0,10,10\tx\nb\t0\tt\t20,20,30,30\tx\n")
    test = tmp_path / "test.tsv"
    test.write_text("c\t0\tt\t0,0,10,10\tx\n")
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps([{"uniq_id": "c", "box": [1, 2, 13, 10]}]))
    got = gc.coordinate_errors(pred, test, train)
    assert got["model"] == [1, 2, 3, 0]
    assert got["mean_box"] == [10, 10, 10, 10]      # mean box 10,10,20,20
