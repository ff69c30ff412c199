"""Per-kind scores on the embedded benchmark (ofa_synth/breakdown.py), as the main job prints them."""
import json

import pytest

from ofa.data_utils.formats import parse_answers
from ofa_synth.breakdown import (
    SNLI_ANSWER,
    answer_table,
    breakdown,
    expression_form,
    grounding_anatomy,
    per_kind,
    row_kinds,
    same_box_share,
)
from ofa_synth.writer import main as synth_main


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert synth_main([str(out), "--num-images", "40", "--seed", "3", "--image-size", "64"]) == 0
    return out


def _rows(path):
    return [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8") if line.strip()]


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("text, form", [
    ("the small red circle on the left", "size+color+shape+where"),
    ("the red object", "color"),
    ("the large star", "size+shape"),
    ("the blue diamond at the bottom", "color+shape+where"),
    ("the yellow square", "color+shape"),
])
def test_expression_form_names_the_attributes_and_the_extreme_position(text, form):
    assert expression_form(text) == form


def test_per_kind_groups_and_averages_sorted_by_row_count():
    scores = {"1": (1.0, "a"), "2": (0.0, "a"), "3": (1.0, "b"), "4": (0.5, "a")}
    got = per_kind(scores, lambda _id, text: text)
    assert list(got) == ["a", "b"]
    assert got["a"] == {"n": 3, "score": 0.5} and got["b"] == {"n": 1, "score": 1.0}


def test_vqa_breakdown_uses_the_recorded_kinds_and_the_confidence_weighted_score(bench, tmp_path):
    rows = _rows(bench / "vqa_test.tsv")
    kinds = row_kinds("vqa_gen", bench / "scenes_test.jsonl")
    assert {r[0] for r in rows} <= set(kinds)
    best = [max(r[3].split("&&"), key=lambda a: float(a.split("|!+")[0])).split("|!+")[1] for r in rows]
    pred = _write(tmp_path / "right.json", [{"question_id": r[0], "answer": a} for r, a in zip(rows, best)])
    got = breakdown("vqa_gen", pred, bench, "test")
    assert sum(v["n"] for v in got.values()) == len(rows)
    assert set(got) == {kinds[r[0]] for r in rows}
    assert all(v["score"] == 1.0 for v in got.values())
    wrong = _write(tmp_path / "wrong.json", [{"question_id": r[0], "answer": "no such answer"} for r in rows])
    assert all(v["score"] == 0.0 for v in breakdown("vqa_gen", wrong, bench, "test").values())


def test_answer_table_shows_a_model_that_always_says_no(bench, tmp_path):
    rows = _rows(bench / "vqa_test.tsv")
    kinds = row_kinds("vqa_gen", bench / "scenes_test.jsonl")
    top = {r[0]: max(refs, key=refs.get) for r in rows for refs in [parse_answers(r[3])]}
    pred = _write(tmp_path / "no.json", [{"question_id": r[0], "answer": "no"} for r in rows])
    got = answer_table("vqa_gen", pred, bench, "test")
    yes_no = {k for k in set(kinds[r[0]] for r in rows) if all(top[r[0]] in ("yes", "no") for r in rows if kinds[r[0]] == k)}
    assert set(got) == yes_no and "exist" in got and "color" not in got
    for kind, cells in got.items():
        mine = [r for r in rows if kinds[r[0]] == kind]
        assert cells == {f"{t}->no": n for t in ("no", "yes") if (n := sum(top[r[0]] == t for r in mine))}
    snli = _rows(bench / "snli_ve_test.tsv")
    pred = _write(tmp_path / "maybe.json", [{"uniq_id": r[0], "answer": "maybe"} for r in snli])
    table = answer_table("snli_ve", pred, bench, "test")
    assert sum(n for cells in table.values() for n in cells.values()) == len(snli)
    assert all(cell.endswith("->maybe") for cells in table.values() for cell in cells)
    assert table["neutral"] == {"maybe->maybe": sum(r[-1] == "neutral" for r in snli)}
    with pytest.raises(ValueError, match="refcoco"):
        answer_table("refcoco", pred, bench, "test")


def test_entailment_breakdown_scores_the_label_per_hypothesis_kind(bench, tmp_path):
    rows = _rows(bench / "snli_ve_test.tsv")
    kinds = row_kinds("snli_ve", bench / "scenes_test.jsonl")
    # answer "yes" everywhere: each kind scores the fraction of its rows labelled entailment
    pred = _write(tmp_path / "yes.json", [{"uniq_id": r[0], "answer": "yes"} for r in rows])
    got = breakdown("snli_ve", pred, bench, "test")
    for kind, v in got.items():
        mine = [r for r in rows if kinds[r[0]] == kind]
        assert v["n"] == len(mine)
        assert v["score"] == pytest.approx(sum(SNLI_ANSWER[r[-1]] == "yes" for r in mine) / len(mine), abs=1e-4)


def test_grounding_breakdown_counts_iou_at_one_half_per_expression_form(bench, tmp_path):
    rows = _rows(bench / "refcoco_test.tsv")
    boxes = [[float(v) for v in r[3].split(",")] for r in rows]
    # the reference box for even rows, a box shifted by its whole width for odd rows (IoU 0)
    pred = [{"uniq_id": r[0], "box": b if k % 2 == 0 else [b[2], b[1], 2 * b[2] - b[0], b[3]]}
            for k, (r, b) in enumerate(zip(rows, boxes))]
    got = breakdown("refcoco", _write(tmp_path / "p.json", pred), bench, "test")
    assert sum(v["n"] for v in got.values()) == len(rows)
    assert set(got) == {expression_form(r[2]) for r in rows}
    total = sum(v["score"] * v["n"] for v in got.values())
    assert total == pytest.approx((len(rows) + 1) // 2, abs=1e-2)


def test_grounding_anatomy_tells_the_right_object_another_object_and_no_object_apart(bench, tmp_path):
    rows = _rows(bench / "refcoco_test.tsv")
    scenes = {str(s["image_id"]): s for s in map(json.loads, open(bench / "scenes_test.jsonl"))}

    def target(r):
        return next(o for o in scenes[r[1]]["objects"] if ",".join(map(str, o["box"])) == r[3])

    # row k % 3: 0 the referred object's box, 1 another object's box, 2 a box in the image corner
    # (1 x 1 px: no object is that small), so each kind is a third of the rows
    pred = []
    for k, r in enumerate(rows):
        other = next(o for o in scenes[r[1]]["objects"] if o is not target(r))
        pred.append({"uniq_id": r[0], "box": [target(r)["box"], other["box"], [0, 0, 1, 1]][k % 3]})
    got = grounding_anatomy(_write(tmp_path / "p.json", pred), bench / "refcoco_test.tsv", bench / "scenes_test.jsonl")
    n = len(rows)
    assert got["all"]["n"] == n
    assert got["all"]["hit"] == pytest.approx(sum(k % 3 == 0 for k in range(n)) / n, abs=1e-4)
    # another object's box may also hit the referred one when the two overlap a lot: then it is a hit
    assert got["all"]["hit"] + got["all"]["other"] == pytest.approx(sum(k % 3 < 2 for k in range(n)) / n, abs=1e-4)
    assert got["all"]["none"] == pytest.approx(sum(k % 3 == 2 for k in range(n)) / n, abs=1e-4)
    by_size = {g: sum(target(r)["size"] == g for r in rows) for g in ("small", "large")}
    assert {g: got[g]["n"] for g in by_size if by_size[g]} == {g: c for g, c in by_size.items() if c}


def test_same_box_share_counts_images_whose_expressions_all_got_one_box(bench, tmp_path):
    rows = _rows(bench / "refcoco_test.tsv")
    by_image = {}
    for r in rows:
        by_image.setdefault(r[1], []).append(r)
    multi = [img for img, rs in by_image.items() if len({r[3] for r in rs}) > 1]
    assert len(multi) >= 2
    ignoring = set(multi[: len(multi) // 2])  # these images: one box for every expression (the first row's)
    pred = [{"uniq_id": r[0], "box": [float(v) for v in (by_image[r[1]][0][3] if r[1] in ignoring else r[3]).split(",")]}
            for r in rows]
    got = same_box_share(_write(tmp_path / "p.json", pred), bench / "refcoco_test.tsv")
    assert got == {"images": len(multi), "same_box": round(len(ignoring) / len(multi), 4)}
    one_box = [{"uniq_id": r[0], "box": [1.0, 2.0, 30.0, 40.0]} for r in rows]
    assert same_box_share(_write(tmp_path / "q.json", one_box), bench / "refcoco_test.tsv")["same_box"] == 1.0


def test_grounding_anatomy_names_a_row_whose_box_is_no_object(bench, tmp_path):
    r = _rows(bench / "refcoco_test.tsv")[0]
    tsv = tmp_path / "t.tsv"
    tsv.write_text("\t".join([r[0], r[1], r[2], "0,0,3,3", r[4]]) + "\n")
    pred = _write(tmp_path / "p.json", [{"uniq_id": r[0], "box": [0, 0, 3, 3]}])
    with pytest.raises(ValueError, match=f"row {r[0]}: box 0,0,3,3 is no object of image {r[1]}"):
        grounding_anatomy(pred, tsv, bench / "scenes_test.jsonl")


def test_unknown_task_is_refused(bench, tmp_path):
    with pytest.raises(ValueError, match="caption"):
        breakdown("caption", tmp_path / "x.json", bench, "test")
