"""The main job's plumbing (``ofa_synth.main_job``, ``recipe``, ``curves``, ``figures``, ``cli``): recipe
overrides and budgets, learning curves read back from fairseq's JSON log, the location-token id range, the
small validation subsets and the figures. The full job is run by hand (README), not here: it takes about
15 minutes."""
from __future__ import annotations

import json

import pytest

from ofa_synth import curves, main_job, recipe


def test_every_task_has_a_target_a_file_and_an_init_that_runs_before_it():
    order = list(recipe.RECIPE)
    for k, (task, r) in enumerate(recipe.RECIPE.items()):
        assert task in recipe.TARGETS and task in recipe.FILES
        if r.get("init"):
            assert order.index(r["init"]) < k, f"{task} starts from {r['init']}, which runs later"
    assert recipe.EVAL_SPLITS == ("test", "comp")
    # the default run: the five tasks with targets; the region and retrieval tasks report their metric only
    assert set(recipe.DEFAULT_TASKS) < set(recipe.RECIPE)
    assert all(recipe.TARGETS[t][1] is not None for t in recipe.DEFAULT_TASKS)
    assert main_job.parse_args([]).tasks.split(",") == list(recipe.DEFAULT_TASKS)


def test_overrides_set_numbers_paths_null_and_extra_args():
    tasks = {t: dict(r) for t, r in recipe.RECIPE.items()}
    scst = dict(recipe.SCST)
    recipe.apply_overrides(tasks, scst, ["refcoco.updates=7", "vqa.init=null", 'caption.init="/x/ckpt.pt"',
                                         "scst.lr=1e-6", "snli.args+=--foo 1"])
    assert tasks["refcoco"]["updates"] == 7
    assert tasks["vqa_gen"]["init"] is None
    assert tasks["caption"]["init"] == "/x/ckpt.pt"
    assert scst["lr"] == 1e-6
    assert tasks["snli_ve"]["args"][-2:] == ["--foo", "1"]
    with pytest.raises(SystemExit):
        recipe.apply_overrides(tasks, scst, ["nosuchtask.updates=1"])
    with pytest.raises(SystemExit):
        recipe.apply_overrides(tasks, scst, ["refcoco=1"])


def test_curves_come_from_the_json_log_without_duplicates(tmp_path):
    log = tmp_path / "train.log"
    inner = {"epoch": 1, "loss": "3.5", "nll_loss": "3.1", "num_updates": "10", "lr": "0.001", "wall": "5"}
    valid = {"epoch": 1, "valid_loss": "3.2", "valid_acc": "0.25", "valid_num_updates": "20"}
    lines = [json.dumps(inner), json.dumps(inner), "not json", json.dumps(valid),
             json.dumps({"epoch": 1, "train_loss": "3.4", "train_num_updates": "20"})]
    log.write_text("\n".join(lines) + "\n")
    c = curves.curves_from_log(log, "acc")
    assert [p["update"] for p in c["train"]] == [10] and c["train"][0]["loss"] == 3.5
    assert c["valid"] == [{"update": 20, "loss": 3.2, "acc": 0.25}]
    assert curves.curves_from_log(tmp_path / "missing.log", "acc") == {"metric": "acc", "train": [], "valid": []}


def test_bin_range_follows_the_dictionary_layout(tmp_path):
    (tmp_path / "dict.txt").write_text("".join(f"w{k} 1\n" for k in range(10)))
    start, end = recipe.bin_range(tmp_path)
    # 4 fairseq specials + 10 words + <mask> + the code tokens, then the bins
    assert start == 4 + 10 + 1 + recipe.CODE_DICT_SIZE and end - start == recipe.NUM_BINS


def test_validation_subset_keeps_the_first_rows(tmp_path):
    src = tmp_path / "a.tsv"
    src.write_text("".join(f"{k}\tx\n" for k in range(10)))
    main_job.write_subset(src, tmp_path / "b.tsv", 3)
    assert (tmp_path / "b.tsv").read_text() == "0\tx\n1\tx\n2\tx\n"


def test_a_benchmark_from_an_older_generator_is_regenerated(tmp_path):
    """A matching manifest skips ``ofa-synth generate``; one written by an older generator version does not."""
    from ofa_synth.version import GENERATOR_VERSION

    class Stages:
        def __init__(self):
            self.ran = []

        def run(self, name, cmd):
            self.ran.append(name)

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "spm.model").write_text("x")
    (tmp_path / "tok" / "dict.txt").write_text("x")
    for version, expected in ((GENERATOR_VERSION, []), (GENERATOR_VERSION - 1, ["synth", "tokenizer"])):
        (tmp_path / "manifest.json").write_text(json.dumps({
            "num_images": 10, "seed": 0, "image_size": [64, 64], "images_per_split": {"comp": 1},
            "generator_version": version}))
        stages = Stages()
        main_job.prepare_data(tmp_path, 10, 64, 0, stages)
        assert stages.ran == expected


def test_scst_training_file_joins_every_caption_of_an_image(tmp_path):
    src = tmp_path / "caption_train.tsv"
    src.write_text("0\t0\ta red circle\tred circle\tIMG0\n1\t0\ta circle\tred circle\tIMG0\n"
                   "10\t1\ta blue star\tblue star\tIMG1\n2\t0\tone red shape\tred circle\tIMG0\n")
    assert main_job.write_caption_refs(src, tmp_path / "refs.tsv") == 2
    rows = [line.split("\t") for line in (tmp_path / "refs.tsv").read_text().splitlines()]
    # official stage-2 layout: keyed by image id, all references joined by "&&", image column kept
    assert rows == [["0", "0", "a red circle&&a circle&&one red shape", "red circle", "IMG0"],
                    ["1", "1", "a blue star", "blue star", "IMG1"]]


def test_quick_and_minutes_budgets_scale_every_task():
    r = {t: dict(v) for t, v in recipe.RECIPE.items()}
    scst = dict(recipe.SCST)
    recipe.quick(r, scst)
    assert {v["updates"] for v in r.values()} == {recipe.QUICK["updates"]} and scst["updates"] == recipe.QUICK["scst_updates"]
    r = {t: dict(v) for t, v in recipe.RECIPE.items()}
    scst = dict(recipe.SCST)
    scale = recipe.scale_budget(r, scst, 7.5)
    assert 0 < scale < 0.5
    assert all(r[t]["updates"] == max(4, round(recipe.RECIPE[t]["updates"] * scale)) for t in r)
    assert scst["updates"] == max(4, round(recipe.SCST["updates"] * scale))


def test_learning_curves_png_is_drawn_for_every_task(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from ofa_synth import figures

    c = {"metric": "acc", "train": [{"update": u, "loss": 3.0 / u, "score": None} for u in (10, 20, 30)],
         "valid": [{"update": 30, "loss": 1.0, "acc": 0.5}]}
    empty = {"metric": "acc", "train": [], "valid": []}
    out = figures.plot_learning_curves({"refcoco": c, "vqa_gen": c, "caption": empty}, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    with Image.open(out) as img:
        assert img.size[0] > 400  # two panels side by side (the empty curve gets none)
    assert figures.plot_learning_curves({"caption": empty}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    from ofa_synth.writer import main as generate

    out = tmp_path_factory.mktemp("bench")
    assert generate([str(out), "--num-images", "30", "--image-size", "64", "--seed", "1", "--quiet"]) == 0
    return out


@pytest.mark.parametrize("task", ["refcoco", "vqa_gen", "snli_ve", "image_classify", "caption"])
def test_prediction_figures_pair_each_prediction_with_its_row(small_bench, tmp_path, task):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from ofa.data_utils.formats import get_schema, parse_answers
    from ofa_synth import figures
    from ofa_synth.breakdown import SNLI_ANSWER

    layout = figures.LAYOUTS[task]
    tsv = small_bench / f"{recipe.FILES[task]}_test.tsv"
    columns = get_schema(layout.schema).columns
    rows = [dict(zip(columns, line.rstrip("\n").split("\t"))) for line in open(tsv, encoding="utf-8") if line.strip()]
    ids = [str(k) if layout.id_column is None else r[layout.id_column] for k, r in enumerate(rows)]
    truth = {"refcoco": lambda r: {"box": [float(v) for v in r["region_coord"].split(",")]},
             "vqa_gen": lambda r: {"answer": max(parse_answers(r["answers"]).items(), key=lambda kv: kv[1])[0]},
             "snli_ve": lambda r: {"answer": SNLI_ANSWER[r["label"]]},
             "image_classify": lambda r: {"answer": r["label_name"]},
             "caption": lambda r: {"caption": r["caption"].split("&&")[0]}}[task]
    # every second row predicted, with its own truth: each pair shown must be a right one, one per image
    preds = [{layout.id_key: i, **truth(r)} for i, r in list(zip(ids, rows))[::2]]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    picked = figures.pick_rows(task, tsv, tmp_path / "p.json", 3)
    image_of = {str(p[layout.id_key]): r["image"] for p, r in zip(preds, rows[::2])}
    first_per_image = [p for k, p in enumerate(preds)
                       if image_of[str(p[layout.id_key])] not in {image_of[str(q[layout.id_key])] for q in preds[:k]}]
    assert [p for _, p in picked] == first_per_image[:3]
    assert len({row["image"] for row, _ in picked}) == len(picked)
    shown = [layout.show(row, pred) for row, pred in picked]
    assert all(s.correct in (True, None) for s in shown)
    out = figures.draw_predictions(task, tsv, tmp_path / "p.json", tmp_path / "fig" / "p.png", n=3)
    with Image.open(out) as img:
        assert img.size[0] > img.size[1]  # three panels in a row


def test_a_wrong_grounding_box_is_shown_as_a_miss(small_bench):
    from ofa_synth import figures

    row = dict(zip(("uniq_id", "image_id", "text", "region_coord", "image"),
                   next(line.rstrip("\n").split("\t") for line in open(small_bench / "refcoco_test.tsv"))))
    x0, y0, x1, y1 = (float(v) for v in row["region_coord"].split(","))
    assert figures.LAYOUTS["refcoco"].show(row, {"box": [x0, y0, x1, y1]}).correct is True
    assert figures.LAYOUTS["refcoco"].show(row, {"box": [x1 + 1, y1 + 1, x1 + 9, y1 + 9]}).correct is False


def test_ofa_synth_dispatches_its_commands_and_refuses_unknown_ones(tmp_path, capsys):
    from ofa_synth.cli import COMMANDS, main

    assert set(COMMANDS) == {"run", "generate", "text", "pretrain", "image-gen"}
    for module in COMMANDS.values():
        assert callable(__import__(module, fromlist=["main"]).main)
    assert main(["generate", str(tmp_path / "b"), "--num-images", "4", "--image-size", "64", "--quiet"]) == 0
    assert (tmp_path / "b" / "manifest.json").is_file()
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err
    assert main([]) == 2 and main(["--help"]) == 0
