"""The main job's plumbing (``scripts/main_job.py``): recipe overrides, learning curves read back from
fairseq's JSON log, the location-token id range and the small validation subsets. The full job is
run by hand (README), not here: it takes about 15 minutes."""
from __future__ import annotations

import json

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def mj():
    return load_script("main_job")


def test_every_task_has_a_target_a_file_and_an_init_that_runs_before_it(mj):
    order = list(mj.RECIPE)
    for k, (task, r) in enumerate(mj.RECIPE.items()):
        assert task in mj.TARGETS and task in mj.FILES
        if r.get("init"):
            assert order.index(r["init"]) < k, f"{task} starts from {r['init']}, which runs later"
    assert mj.EVAL_SPLITS == ("test", "comp")


def test_overrides_set_numbers_paths_null_and_extra_args(mj):
    recipe = {t: dict(r) for t, r in mj.RECIPE.items()}
    scst = dict(mj.SCST)
    mj.apply_overrides(recipe, scst, ["refcoco.updates=7", "vqa.init=null", 'caption.init="/x/ckpt.pt"',
                                      "scst.lr=1e-6", "snli.args+=--foo 1"])
    assert recipe["refcoco"]["updates"] == 7
    assert recipe["vqa_gen"]["init"] is None
    assert recipe["caption"]["init"] == "/x/ckpt.pt"
    assert scst["lr"] == 1e-6
    assert recipe["snli_ve"]["args"][-2:] == ["--foo", "1"]
    with pytest.raises(SystemExit):
        mj.apply_overrides(recipe, scst, ["nosuchtask.updates=1"])
    with pytest.raises(SystemExit):
        mj.apply_overrides(recipe, scst, ["refcoco=1"])


def test_curves_come_from_the_json_log_without_duplicates(mj, tmp_path):
    log = tmp_path / "train.log"
    inner = {"epoch": 1, "loss": "3.5", "nll_loss": "3.1", "num_updates": "10", "lr": "0.001", "wall": "5"}
    valid = {"epoch": 1, "valid_loss": "3.2", "valid_acc": "0.25", "valid_num_updates": "20"}
    lines = [json.dumps(inner), json.dumps(inner), "not json", json.dumps(valid),
             json.dumps({"epoch": 1, "train_loss": "3.4", "train_num_updates": "20"})]
    log.write_text("\n".join(lines) + "\n")
    c = mj.curves_from_log(log, "acc")
    assert [p["update"] for p in c["train"]] == [10] and c["train"][0]["loss"] == 3.5
    assert c["valid"] == [{"update": 20, "loss": 3.2, "acc": 0.25}]
    assert mj.curves_from_log(tmp_path / "missing.log", "acc") == {"metric": "acc", "train": [], "valid": []}


def test_bin_range_follows_the_dictionary_layout(mj, tmp_path):
    (tmp_path / "dict.txt").write_text("".join(f"w{k} 1\n" for k in range(10)))
    start, end = mj.bin_range(tmp_path)
    # 4 fairseq specials + 10 words + <mask> + the code tokens, then the bins
    assert start == 4 + 10 + 1 + mj.CODE_DICT_SIZE and end - start == mj.NUM_BINS


def test_validation_subset_keeps_the_first_rows(mj, tmp_path):
    src = tmp_path / "a.tsv"
    src.write_text("".join(f"{k}\tx\n" for k in range(10)))
    mj.write_subset(src, tmp_path / "b.tsv", 3)
    assert (tmp_path / "b.tsv").read_text() == "0\tx\n1\tx\n2\tx\n"


def test_a_benchmark_from_an_older_generator_is_regenerated(mj, tmp_path):
    """A matching manifest skips ``ofa-data synth``; one written by an older generator version does not."""
    from ofa.data_utils.synth.version import GENERATOR_VERSION

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
        mj.prepare_data(tmp_path, 10, 64, 0, stages)
        assert stages.ran == expected


def test_scst_training_file_joins_every_caption_of_an_image(mj, tmp_path):
    src = tmp_path / "caption_train.tsv"
    src.write_text("0\t0\ta red circle\tred circle\tIMG0\n1\t0\ta circle\tred circle\tIMG0\n"
                   "10\t1\ta blue star\tblue star\tIMG1\n2\t0\tone red shape\tred circle\tIMG0\n")
    assert mj.write_caption_refs(src, tmp_path / "refs.tsv") == 2
    rows = [line.split("\t") for line in (tmp_path / "refs.tsv").read_text().splitlines()]
    # official stage-2 layout: keyed by image id, all references joined by "&&", image column kept
    assert rows == [["0", "0", "a red circle&&a circle&&one red shape", "red circle", "IMG0"],
                    ["1", "1", "a blue star", "blue star", "IMG1"]]
