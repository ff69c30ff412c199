"""experiments/plain_baselines.py: plain PyTorch models on the main job's rows (its pieces)."""
import json

import pytest
import torch

from experiments import plain_baselines as plain


@pytest.mark.parametrize("name", ["film", "encoder_mlp", "query"])
@pytest.mark.parametrize("outputs", [(4, 32), (1, 7)])
def test_every_model_maps_an_image_and_its_words_to_k_class_distributions(name, outputs):
    model = plain.build(name, vocab_size=10, outputs=outputs)
    images, words = torch.randn(3, 3, 64, 64), torch.tensor([[2, 3, 0], [4, 0, 0], [5, 6, 7]])
    assert model(images, words).shape == (3, *outputs)


def test_query_position_std_sets_the_image_position_embeddings():
    model = plain.build("query", vocab_size=10, query_pos_std=1.0)
    assert 0.8 < model.image_pos.std().item() < 1.2
    with pytest.raises(ValueError, match="unknown model 'cnn'"):
        plain.build("cnn", 10)


def test_box_rows_score_official_acc_at_05_and_answer_rows_their_gold_confidence():
    onehot = lambda ids, c: torch.nn.functional.one_hot(torch.tensor(ids), c).float()  # noqa: E731
    box = torch.tensor([[0.0, 0.0, 64.0, 20.0 * 64 / 31]], dtype=torch.float64)  # bins 0, 0, 31, 20
    assert plain.row_scores(onehot([[0, 0, 31, 20]], 32), box, None).tolist() == [1.0]
    assert plain.row_scores(onehot([[25, 25, 31, 31]], 32), box, None).tolist() == [0.0]
    gold = [{"red": 1.0, "pink": 0.3}, {"red": 1.0}]
    answers = ["red", "pink", "blue"]
    assert plain.row_scores(onehot([[1], [2]], 3), gold, answers).tolist() == pytest.approx([0.3, 0.0])


def test_kind_scores_average_the_rows_of_each_recorded_kind():
    kinds = {"1": "exist", "2": "exist", "3": "color"}
    got = plain.kind_scores(torch.tensor([1.0, 0.0, 0.5, 1.0]), ["1", "2", "3", "9"], kinds)
    assert got == {"exist": {"n": 2, "score": 0.5}, "color": {"n": 1, "score": 0.5},
                   "unknown": {"n": 1, "score": 1.0}}


def test_runs_on_the_embedded_benchmark(tmp_path, capsys):
    from ofa_synth.writer import main as synth_main

    data = tmp_path / "data"
    assert synth_main([str(data), "--num-images", "30", "--image-size", "64", "--seed", "1"]) == 0
    (data / "tok").mkdir()  # the main job's tokenizer folder, which the control folders copy (unused here)
    out = tmp_path / "plain.json"
    assert plain.main(["--data", str(data), "--rows", "colour,referring,vqa,snli_ve", "--updates", "2",
                       "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["rows"], r["model"]) for r in runs] == [
        (rows, m) for rows in ("colour", "referring", "vqa", "snli_ve") for m in ("film", "encoder_mlp", "query")]
    assert all(0.0 <= r["test_score"] <= 1.0 and r["curve"][-1]["update"] == 2 for r in runs)
    for r in runs:  # answer rows are also scored per question / hypothesis kind, over every test row
        if r["rows"] in ("vqa", "snli_ve"):
            assert sum(v["n"] for v in r["by_kind"].values()) == r["test_rows"] and "unknown" not in r["by_kind"]
        else:
            assert "by_kind" not in r
    assert (tmp_path / "plain_baselines" / "colour_data" / "refcoco_train.tsv").is_file()
    assert "snli_ve    query" in capsys.readouterr().out
