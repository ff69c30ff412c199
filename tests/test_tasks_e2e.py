"""Every finetuning task trains a few steps and evaluates on the embedded benchmark (ofa_test, CPU)."""
from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ofa.cli.evaluate import evaluate_command as evaluate_main
from ofa.cli.train import train as train_main

TASKS = {
    "caption": (["--eval-max-len-b", "6", "--eval-no-repeat-ngram-size", "3"], "cider"),
    "refcoco": ([], "acc"),
    "vqa_gen": (["--ans2label-file", "{data}/vqa_ans2label.json", "--prompt-type", "prev_output"], "vqa_score"),
    "snli_ve": (["--prompt-type", "prev_output"], "snli_score"),
    "image_classify": (["--ans2label-file", "{data}/class_names.txt"], "accuracy"),
    "detection": (["--class-names", "{data}/class_names.txt", "--max-objects", "4"], "ap50"),
    "region_caption": (["--eval-max-len-b", "6"], "cider"),
    "image_text_match": (["--max-eval-images", "8"], "i2t_r1"),
}
FILES = {"caption": "caption", "refcoco": "refcoco", "vqa_gen": "vqa", "snli_ve": "snli_ve",
         "image_classify": "image_classify", "detection": "detection", "region_caption": "region_caption",
         "image_text_match": "caption"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A 24-image embedded benchmark at 64 px and a SentencePiece tokenizer trained on its text."""
    from ofa_synth.writer import main as synth_main
    from ofa.tokenizer import train_sentencepiece

    out = tmp_path_factory.mktemp("synth")
    synth_main([str(out), "--num-images", "24", "--image-size", "64", "--seed", "0"])
    train_sentencepiece(str(out / "text_corpus.txt"), str(out / "tok"), vocab_size=400)
    return out


def train_args(task, data, save, extra=()):
    name = FILES[task]
    return [f"{data}/{name}_train.tsv,{data}/{name}_valid.tsv", "--task", task, "--bpe-dir", f"{data}/tok",
            "--arch", "ofa_test", "--cpu", "--patch-image-size", "64", "--batch-size", "4", "--max-update", "2",
            "--optimizer", "adam", "--lr", "1e-3", "--criterion", "adjust_label_smoothed_cross_entropy",
            "--label-smoothing", "0.1", "--save-dir", str(save), "--no-epoch-checkpoints", "--log-format", "simple",
            "--num-workers", "0", "--validate-interval-updates", "2", "--batch-size-valid", "8", "--seed", "1",
            "--best-checkpoint-metric", TASKS[task][1], "--maximize-best-checkpoint-metric",
            *[a.format(data=data) for a in TASKS[task][0]], *extra]


@pytest.mark.parametrize("task", list(TASKS))
def test_task_trains_and_evaluates(task, bench, tmp_path):
    save = tmp_path / "ckpt"
    train_main(train_args(task, bench, save))
    assert (save / "checkpoint_last.pt").is_file() and (save / "checkpoint_best.pt").is_file()
    results = tmp_path / "results"
    evaluate_main([f"{bench}/{FILES[task]}_test.tsv", "--path", str(save / "checkpoint_last.pt"),
                   "--results-path", str(results), "--batch-size", "8"])
    metrics = json.loads((results / "test_metrics.json").read_text())
    predictions = json.loads((results / "test_predict.json").read_text())
    metric = TASKS[task][1]
    assert 0.0 <= metrics[metric] <= (10.0 if metric == "cider" else 1.0)
    n_rows = sum(1 for line in open(f"{bench}/{FILES[task]}_test.tsv") if line.strip())
    assert metrics["count"] == n_rows == len(predictions)
    assert not list(results.glob("*.partial"))


def test_a_task_added_through_user_dir_trains_and_evaluates(bench, tmp_path):
    """A new task is one file in a --user-dir plugin (tests/plugin_example/tasks/object_count.py)."""
    plugin = Path(__file__).resolve().parent / "plugin_example"
    save = tmp_path / "ckpt"
    args = train_args("caption", bench, save)
    args[args.index("--task") + 1] = "object_count"
    args[args.index("--best-checkpoint-metric") + 1] = "accuracy"
    for flag in ("--eval-max-len-b", "--eval-no-repeat-ngram-size"):
        i = args.index(flag)
        del args[i:i + 2]
    train_main(["--user-dir", str(plugin), *args])
    results = tmp_path / "results"
    evaluate_main([f"{bench}/caption_test.tsv", "--path", str(save / "checkpoint_last.pt"), "--user-dir", str(plugin),
                   "--results-path", str(results), "--batch-size", "8"])
    metrics = json.loads((results / "test_metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["count"] > 0
    records = json.loads((results / "test_predict.json").read_text())
    assert {r["answer"] for r in records} <= {"zero", "one", "two", "three", "four", "five"}

    # ofa-predict runs the plugin task too (its file calls register_inference), in a fresh process
    first = next(line for line in open(f"{bench}/caption_test.tsv") if line.strip()).rstrip("\n").split("\t")
    image = tmp_path / "first.png"
    image.write_bytes(base64.b64decode(first[4]))  # uniq_id, image_id, caption, predicted_objects, image
    out = subprocess.run([sys.executable, "-m", "ofa.cli.predict", "--checkpoint", str(save / "checkpoint_last.pt"),
                          "--image", str(image), "--user-dir", str(plugin), "--task", "count", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    expected = next(r["answer"] for r in records if str(r["uniq_id"]) == first[0])
    assert result["task"] == "object_count" and result["answer"] == expected and 0 < result["score"] <= 1


def test_training_with_ema_stores_weights_that_evaluate_with_ema(bench, tmp_path):
    save = tmp_path / "ckpt"
    train_main(train_args("snli_ve", bench, save, ["--store-ema", "--ema-decay", "0.5", "--ema-start-update", "0"]))
    from ofa.checkpoint import load_model

    raw, _, _ = load_model(str(save / "checkpoint_last.pt"))
    ema, _, info = load_model(str(save / "checkpoint_last.pt"), ema=True)
    assert info.ema
    assert not torch.equal(raw.encoder.image_proj.weight, ema.encoder.image_proj.weight)
    results = tmp_path / "results"
    evaluate_main([f"{bench}/snli_ve_test.tsv", "--path", str(save / "checkpoint_last.pt"), "--ema",
                   "--results-path", str(results), "--batch-size", "8"])
    assert "snli_score" in json.loads((results / "test_metrics.json").read_text())


def test_vqa_beam_search_after_a_question_prompt_ranks_like_candidate_scoring(bench, tmp_path):
    """--prompt-type prev_output forces the question before the answer: trie-constrained beam search must
    leave room for it (it used to finish no hypothesis) and, ranking answers by their summed
    log-probability with a beam that holds every candidate, pick what scoring every candidate picks."""
    save = tmp_path / "ckpt"
    train_main(train_args("vqa_gen", bench, save))
    answers = {}
    for mode in ("allcand", "beamsearch"):
        results = tmp_path / mode
        evaluate_main([f"{bench}/vqa_test.tsv", "--path", str(save / "checkpoint_last.pt"), "--results-path",
                       str(results), "--batch-size", "8", "--val-inference-type", mode, "--eval-beam", "64"])
        answers[mode] = {r["question_id"]: r["answer"] for r in json.loads((results / "test_predict.json").read_text())}
    candidates = set(json.loads(open(f"{bench}/vqa_ans2label.json").read()))
    assert answers["beamsearch"].keys() == answers["allcand"].keys() and len(answers["allcand"]) > 0
    assert set(answers["beamsearch"].values()) <= candidates
    same = sum(answers["beamsearch"][q] == a for q, a in answers["allcand"].items())
    assert same == len(answers["allcand"])


def test_log_file_gets_each_line_once_across_epochs(bench, tmp_path, caplog):
    """fairseq attached a new --log-file handler per epoch and validation: epoch N wrote every line N times."""
    caplog.set_level(logging.INFO)  # fairseq logs its stats at INFO (pytest leaves the root at WARNING)
    rows = sum(1 for line in open(f"{bench}/image_classify_train.tsv") if line.strip())
    updates = 3 * -(-rows // 4)  # three epochs of batch 4
    log = tmp_path / "logs" / "train.log"
    args = train_args("image_classify", bench, tmp_path / "ckpt",
                      ["--log-file", str(log), "--log-format", "json", "--log-interval", "1"])
    args[args.index("--max-update") + 1] = str(updates)
    args[args.index("--validate-interval-updates") + 1] = str(updates // 3)
    train_main(args)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    valid = [json.loads(line) for line in lines if '"valid_loss"' in line]
    inner = [json.loads(line) for line in lines if '"update"' in line and '"valid_loss"' not in line]
    assert len(lines) == len(set(lines))
    assert [int(v["valid_num_updates"]) for v in valid] == [updates // 3, 2 * updates // 3, updates]
    assert max(int(r["num_updates"]) for r in inner) >= updates - 1 and max(r["epoch"] for r in inner) == 3


def test_image_backbone_lr_scale_zero_keeps_the_resnet_weights_while_the_rest_trains(bench, tmp_path):
    """``--image-backbone-lr-scale 0``: one or two updates leave the ResNet's weights at their
    initialisation (same seed), while the transformer's change between them."""
    from ofa.checkpoint import load_model

    models = {}
    for updates in (1, 2):
        save = tmp_path / f"ckpt{updates}"
        args = train_args("image_classify", bench, save, ["--image-backbone-lr-scale", "0"])
        args[args.index("--max-update") + 1] = str(updates)
        train_main(args)
        models[updates] = load_model(str(save / "checkpoint_last.pt"))[0]
    one, two = (dict(models[n].named_parameters()) for n in (1, 2))
    backbone = [k for k in one if k.startswith("encoder.embed_images.")]
    assert backbone and all(torch.equal(one[k], two[k]) for k in backbone)
    assert not torch.equal(one["encoder.image_proj.weight"], two["encoder.image_proj.weight"])
    with pytest.raises(ValueError, match="--image-backbone-lr-scale must be >= 0, got -0.5"):
        train_main(train_args("image_classify", bench, tmp_path / "bad", ["--image-backbone-lr-scale", "-0.5"]))


def test_layer_init_std_from_the_command_line_sets_the_fresh_models_layer_weights(bench, tmp_path):
    """``--layer-init-std`` reaches the model ofa-train builds and is stored in its checkpoint."""
    from ofa.checkpoint import load_model, safe_load

    save = tmp_path / "ckpt"
    args = train_args("image_classify", bench, save, ["--layer-init-std", "0.5"])
    args[args.index("--max-update") + 1], args[args.index("--lr") + 1] = "1", "1e-9"
    train_main(args)
    model = load_model(str(save / "checkpoint_last.pt"))[0]
    assert abs(model.encoder.layers[0].fc1.weight.std().item() - 0.5) < 0.05
    assert abs(model.encoder.pos_q_linear.weight.std().item() - 0.02) < 0.005
    assert safe_load(str(save / "checkpoint_last.pt"))["cfg"]["model"]["layer_init_std"] == 0.5


def test_a_checkpoint_of_another_task_gives_no_generation_settings_or_answers():
    """Zero-shot grounding from a unify checkpoint: a box is 4 tokens whatever the pretraining decoded."""
    import ofa.tasks  # noqa: F401  (registers the tasks)
    from ofa.task_config import build_task_config

    saved = {"_name": "unify", "eval_min_len": 1, "eval_max_len_b": 16, "patch_image_size": 64, "num_bins": 32,
             "ans2label_file": "pretraining_answers.json"}
    cfg = build_task_config("refcoco", saved, {})
    assert (cfg.eval_min_len, cfg.eval_max_len_b) == (4, 4)  # refcoco's own, not unify's
    assert (cfg.patch_image_size, cfg.num_bins) == (64, 32)  # the model's input options still apply
    assert build_task_config("vqa_gen", saved, {}).ans2label_file != "pretraining_answers.json"
    # the same task's saved settings and the command line are kept
    same = build_task_config("refcoco", {**saved, "_name": "refcoco", "eval_max_len_b": 5}, {"eval_min_len": 3})
    assert (same.eval_min_len, same.eval_max_len_b) == (3, 5)


def test_region_tasks_predict_and_draw_from_a_checkpoint(bench, tmp_path):
    """ofa.inference_model on detection (every object, boxes inside the image) and region_caption (the region
    given as text), and --draw's image; a region outside the image is a one-line InputError."""
    from ofa.inference import InputError, draw_result, inference_model

    first = next(line for line in open(f"{bench}/detection_test.tsv") if line.strip()).rstrip("\n").split("\t")
    image = tmp_path / "first.png"
    image.write_bytes(base64.b64decode(first[1]))  # uniq_id, image, boxes
    for task in ("detection", "region_caption"):
        train_main(train_args(task, bench, tmp_path / task))
    ckpt = str(tmp_path / "detection" / "checkpoint_last.pt")
    result = inference_model(ckpt, str(image), max_objects=2)
    assert result["task"] == "detection" and len(result["objects"]) <= 2 and result["logprob"] <= 0
    for o in result["objects"]:
        x0, y0, x1, y1 = o["box"]
        assert 0 <= x0 <= 64 and 0 <= x1 <= 64 and 0 <= y0 <= 64 and 0 <= y1 <= 64 and 0 < o["score"] <= 1
        assert o["label"] in open(f"{bench}/class_names.txt").read().splitlines()
    assert draw_result(str(image), result).size == (64, 64)
    ckpt = str(tmp_path / "region_caption" / "checkpoint_last.pt")
    result = inference_model(ckpt, str(image), text="2,3,30,40")
    assert result["region"] == [2.0, 3.0, 30.0, 40.0] and isinstance(result["caption"], str)
    assert draw_result(str(image), result).size == (64, 64)
    with pytest.raises(InputError, match="outside the 64x64 image"):
        inference_model(ckpt, str(image), text="2,3,300,40")
