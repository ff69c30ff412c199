"""Single-image inference (``ofa.inference_model``) and the ``ofa-predict`` command, on an untrained tiny model.

One module-scoped fixture writes the synthetic benchmark, trains a small SentencePiece tokenizer, builds
an ``ofa_test`` model and saves it three times as fairseq checkpoints whose task configs are refcoco,
vqa_gen (with the benchmark's answer list) and image_classify (with its class names). The test image
is a benchmark image resized to 100 x 72, so the resize ratios to the 64 x 64 model input differ from 1
and differ between x and y.
"""
from __future__ import annotations

import io
import json
import os
import string

import pytest
import torch
from PIL import Image

import ofa
import ofa.inference as inf
from model_helpers import check_logprob
from ofa.cli import predict
from ofa.errors import ConfigError
from ofa.tasks.closed_set import closed_set_inference

IMAGE_W, IMAGE_H = 100, 72
PATCH = 64


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from ofa.checkpoint import save_checkpoint
    from ofa.data_utils.images import decode_b64
    from ofa.model import OFAModel, config_for_arch
    from ofa.tokenizer import load_tokenizer, train_sentencepiece
    from ofa_synth.writer import main as synth_main

    saved_cache_size = inf.CACHE_SIZE
    inf.CACHE_SIZE = 8  # keep every test checkpoint loaded (loading dominates the run time)
    root = tmp_path_factory.mktemp("inference")
    data = root / "synth"
    synth_main([str(data), "--num-images", "20", "--image-size", "64", "--seed", "0", "--quiet"])
    tok_dir = train_sentencepiece(str(data / "text_corpus.txt"), str(root / "tok"), vocab_size=400)
    tokenizer = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = OFAModel.from_config(config_for_arch("ofa_test"), tokenizer.dictionary)
    common = {"bpe_dir": tok_dir, "patch_image_size": PATCH, "max_image_size": PATCH, "eval_beam": 2}
    ckpts = {
        "refcoco": root / "refcoco.pt",
        "vqa_gen": root / "vqa.pt",
        "image_classify": root / "classify.pt",
    }
    save_checkpoint(model, str(ckpts["refcoco"]), task_cfg={"_name": "refcoco", **common})
    save_checkpoint(model, str(ckpts["vqa_gen"]), task_cfg={
        "_name": "vqa_gen", "ans2label_file": str(data / "vqa_ans2label.json"), **common})
    save_checkpoint(model, str(ckpts["image_classify"]), task_cfg={
        "_name": "image_classify", "ans2label_file": str(data / "class_names.txt"), **common})

    with open(data / "refcoco_test.tsv") as f:
        b64 = f.readline().rstrip("\n").split("\t")[-1]  # uniq_id, image_id, text, box, image
    image = decode_b64(b64).resize((IMAGE_W, IMAGE_H), Image.BICUBIC)
    image_path = root / "scene.png"
    image.save(image_path)
    with open(data / "vqa_ans2label.json") as f:
        vqa_answers = list(json.load(f))
    class_names = [line.strip() for line in open(data / "class_names.txt") if line.strip()]
    yield {"root": root, "tok": tok_dir, "ckpt": {k: str(v) for k, v in ckpts.items()}, "image": str(image_path),
           "vqa_answers": vqa_answers, "class_names": class_names}
    inf.clear_cache()
    inf.CACHE_SIZE = saved_cache_size


def _check_closed_set(result, key, candidates):
    assert isinstance(result[key], str) and result[key] in candidates
    check_logprob(result)
    assert result["score"] == result["prob"]  # kept for compatibility: the probability for closed-set tasks
    top = result["top"]
    assert len(top) == min(5, len(candidates))
    assert all(isinstance(a, str) and a in candidates and isinstance(p, float) for a, p in top)
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True)
    assert top[0] == (result[key], result["prob"])
    assert sum(probs) <= 1.0 + 1e-5
    assert result["image_size"] == [IMAGE_W, IMAGE_H]


# ------------------------------------------------------------------------------------------- API
def test_grounding_box_is_mapped_back_to_original_image_pixels(bench):
    r = inf.inference_model(bench["ckpt"]["refcoco"], bench["image"], text="the large green square")
    assert set(r) == {"task", "box", "bins", "logprob", "prob", "score", "image_size"}
    assert r["task"] == "refcoco" and r["image_size"] == [IMAGE_W, IMAGE_H]
    check_logprob(r)
    # the four bins and EOS: the sum of five token log-probabilities, the generator's score is their mean
    assert r["score"] == pytest.approx(r["logprob"] / 5, abs=1e-5)
    x0, y0, x1, y1 = r["box"]
    assert all(isinstance(v, float) for v in r["box"])
    assert 0.0 <= x0 <= IMAGE_W and 0.0 <= x1 <= IMAGE_W and 0.0 <= y0 <= IMAGE_H and 0.0 <= y1 <= IMAGE_H
    # bin -> resized pixel (max_image_size = 64) -> original pixel: x scales by w / 64, y by h / 64
    num_bins = 1000
    bx0, by0, bx1, by1 = r["bins"]
    expected = [bx0 / (num_bins - 1) * IMAGE_W, by0 / (num_bins - 1) * IMAGE_H,
                bx1 / (num_bins - 1) * IMAGE_W, by1 / (num_bins - 1) * IMAGE_H]
    assert r["box"] == pytest.approx(expected, abs=0.01)


def test_caption_is_punctuation_free_text_with_summed_logprob(bench):
    r = inf.inference_model(bench["ckpt"]["refcoco"], bench["image"], task="caption")
    assert set(r) == {"task", "caption", "logprob", "prob", "score", "image_size"}
    assert r["task"] == "caption" and isinstance(r["caption"], str)
    assert not any(c in string.punctuation for c in r["caption"])
    check_logprob(r)
    assert r["logprob"] <= r["score"] <= 0.0  # score: the same log-probability divided by the length


def test_generation_overrides_reach_the_beam_search(bench):
    r = inf.inference_model(bench["ckpt"]["refcoco"], bench["image"], task="caption", beam_size=1, max_len_b=2)
    assert len(r["caption"].split()) <= 2


def test_vqa_gives_softmax_over_answer_file_with_sorted_top5(bench):
    r = inf.inference_model(bench["ckpt"]["vqa_gen"], bench["image"], text="what colour is the square?")
    assert r["task"] == "vqa_gen"  # the checkpoint's own task by default
    assert set(r) == {"task", "answer", "logprob", "prob", "score", "top", "image_size"}
    _check_closed_set(r, "answer", bench["vqa_answers"])


def test_entailment_scores_yes_no_maybe_and_uses_the_premise_when_given(bench):
    results = []
    for kwargs in ({}, {"caption": "a green square and a red circle"}):
        r = inf.inference_model(bench["ckpt"]["refcoco"], bench["image"], task="entailment",
                                text="there is a green square", **kwargs)
        assert r["task"] == "snli_ve"
        _check_closed_set(r, "answer", ["yes", "no", "maybe"])
        assert sum(p for _, p in r["top"]) == pytest.approx(1.0, abs=1e-5)  # all three candidates listed
        results.append(dict(r["top"]))
    assert results[0] != results[1]  # the premise changes the encoder prompt


def test_classification_returns_a_label_from_the_class_names(bench):
    r = inf.inference_model(bench["ckpt"]["image_classify"], bench["image"])
    assert r["task"] == "image_classify" and "answer" not in r
    assert set(r) == {"task", "label", "logprob", "prob", "score", "top", "image_size"}
    _check_closed_set(r, "label", bench["class_names"])


def test_task_option_override_replaces_the_saved_answer_file(bench, tmp_path):
    answers = tmp_path / "answers.txt"
    answers.write_text("red\ngreen\n")
    r = inf.inference_model(bench["ckpt"]["vqa_gen"], bench["image"], text="what colour?",
                            ans2label_file=str(answers))
    assert {a for a, _ in r["top"]} == {"red", "green"}


@pytest.mark.parametrize("alias,name", [
    ("caption", "caption"), ("grounding", "refcoco"), ("refcoco", "refcoco"), ("visual_grounding", "refcoco"),
    ("Visual-Grounding", "refcoco"), ("vqa", "vqa_gen"), ("vqa_gen", "vqa_gen"), ("entailment", "snli_ve"),
    ("snli_ve", "snli_ve"), ("classify", "image_classify"), ("image_classify", "image_classify"),
    ("itm", "image_text_match"), ("Image-Text-Matching", "image_text_match"), ("retrieval", "image_text_match"),
])
def test_task_aliases_map_to_registered_tasks(alias, name):
    assert inf.canonical_task(alias) == name
    from fairseq.tasks import TASK_REGISTRY

    assert name in TASK_REGISTRY


def test_register_inference_refuses_an_alias_another_task_owns():
    spec = closed_set_inference(row=lambda image, size, text, premise: {}, aliases=("vqa",))
    with pytest.raises(ValueError, match="alias 'vqa' of 'my_vqa' already names the task 'vqa_gen'"):
        inf.register_inference("my_vqa", spec)
    assert "my_vqa" not in inf.INFERENCE and inf.canonical_task("vqa") == "vqa_gen"


def test_a_registered_task_and_its_aliases_become_valid_names(monkeypatch):
    monkeypatch.setattr(inf, "INFERENCE", dict(inf.INFERENCE))  # the registry is restored after the test
    inf.register_inference("object_size", closed_set_inference(row=lambda image, size, text, premise: {},
                                                               aliases=("size",)))
    assert inf.canonical_task("Size") == inf.canonical_task("object_size") == "object_size"
    assert {"object_size", "size"} <= set(inf.valid_task_names())


def test_alias_call_gives_the_same_prediction_as_the_registered_name(bench):
    a = inf.inference_model(bench["ckpt"]["refcoco"], bench["image"], task="visual_grounding", text="the square")
    b = inf.inference_model(bench["ckpt"]["refcoco"], bench["image"], task="refcoco", text="the square")
    assert a == b


def test_unknown_task_error_lists_the_valid_names(bench):
    with pytest.raises(ConfigError) as e:
        inf.inference_model(bench["ckpt"]["refcoco"], bench["image"], task="ocr")
    for name in ("caption", "refcoco", "grounding", "vqa", "snli_ve", "classify", "image_classify"):
        assert name in str(e.value)


def test_a_misspelt_task_gets_the_near_names():
    with pytest.raises(ConfigError, match=r"unknown task 'captoin'; did you mean caption or captioning"):
        inf.canonical_task("captoin")
    with pytest.raises(ConfigError, match=r"task 'gigaword' has no inference"):  # a text task of OFA
        inf.canonical_task("gigaword")


def test_grounding_without_text_is_an_error(bench):
    with pytest.raises(ValueError, match="referring expression"):
        inf.inference_model(bench["ckpt"]["refcoco"], bench["image"])


def test_unknown_keyword_is_rejected_not_ignored(bench):
    with pytest.raises(TypeError, match="beam_sise"):
        inf.inference_model(bench["ckpt"]["refcoco"], bench["image"], text="x", beam_sise=3)


def test_path_bytes_and_pil_inputs_give_the_same_result(bench):
    ckpt, path = bench["ckpt"]["refcoco"], bench["image"]
    with open(path, "rb") as f:
        raw = f.read()
    results = [inf.inference_model(ckpt, img, text="the square") for img in (path, raw, Image.open(path))]
    assert results[0] == results[1] == results[2]


@pytest.fixture
def counted_loads(bench, monkeypatch):
    """Replace ``load_model`` by a counter that hands out the already-loaded refcoco model (no disk reads)."""
    calls = []
    loaded = tuple(inf.load(bench["ckpt"]["refcoco"]))

    def fake_load_model(path, bpe_dir=None, ema=False):
        calls.append((path, bpe_dir, ema))
        return loaded

    monkeypatch.setattr(inf, "load_model", fake_load_model)
    return calls


def test_model_cache_loads_each_checkpoint_once(bench, counted_loads):
    ckpt = bench["root"] / "cache_test.pt"  # a path no other test has loaded
    ckpt.write_bytes(b"stand-in")
    first = inf.inference_model(str(ckpt), bench["image"], text="the square")
    second = inf.inference_model(str(ckpt), bench["image"], text="the square")
    assert len(counted_loads) == 1 and first == second
    handle = inf.load(str(ckpt))
    assert len(counted_loads) == 1
    inf.inference_model(str(ckpt), bench["image"], text="the square", bpe_dir=bench["tok"])  # another cache key
    inf.inference_model(str(ckpt), bench["image"], text="the square", ema=True)  # and another
    assert [c[1:] for c in counted_loads] == [(None, False), (bench["tok"], False), (None, True)]
    # an already-loaded (model, dictionary, info) tuple or a handle never goes through load_model
    loaded = tuple(handle)
    assert inf.inference_model(loaded, bench["image"], text="the square") == first
    assert inf.inference_model(handle, bench["image"], text="the square") == first
    assert inf.load(loaded) is inf.load(loaded)
    assert len(counted_loads) == 3


def test_checkpoint_rewritten_in_place_is_reloaded(bench, counted_loads):
    ckpt = bench["root"] / "rewritten.pt"
    ckpt.write_bytes(b"stand-in")
    inf.load(str(ckpt))
    inf.load(str(ckpt))
    assert len(counted_loads) == 1
    os.utime(ckpt, ns=(0, os.stat(ckpt).st_mtime_ns + 10**9))
    inf.load(str(ckpt))
    assert len(counted_loads) == 2


def test_inference_model_is_exported_from_the_package():
    assert ofa.inference_model is inf.inference_model and "inference_model" in ofa.__all__


# ------------------------------------------------------------------------------------------- CLI
def test_cli_draw_writes_png_of_input_size_with_the_box_drawn(bench, tmp_path, capsys):
    out = tmp_path / "drawn.png"
    rc = predict.main(["--checkpoint", bench["ckpt"]["refcoco"], "--image", bench["image"],
                       "--text", "the square", "--draw", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "box:" in printed
    with Image.open(out) as drawn:
        assert drawn.format == "PNG" and drawn.size == (IMAGE_W, IMAGE_H)
        drawn = drawn.convert("RGB")
    with Image.open(bench["image"]) as original:
        assert list(drawn.getdata()) != list(original.convert("RGB").getdata())


def test_cli_draw_writes_the_prediction_text_for_other_tasks(bench, tmp_path, capsys):
    out = tmp_path / "answer.png"
    rc = predict.main(["--checkpoint", bench["ckpt"]["vqa_gen"], "--image", bench["image"],
                       "--text", "what colour?", "--draw", str(out)])
    assert rc == 0 and "answer:" in capsys.readouterr().out
    with Image.open(out) as drawn:
        assert drawn.size == (IMAGE_W, IMAGE_H)


def test_cli_json_output_is_parseable(bench, capsys):
    rc = predict.main(["--checkpoint", bench["ckpt"]["image_classify"], "--image", bench["image"], "--json",
                       "--set", "valid_batch_size=7"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "image_classify" and result["label"] in bench["class_names"]
    assert result["image_size"] == [IMAGE_W, IMAGE_H] and len(result["top"]) == 5


def test_cli_unknown_task_exits_nonzero_listing_valid_names(bench, capsys):
    rc = predict.main(["--checkpoint", bench["ckpt"]["refcoco"], "--image", bench["image"], "--task", "ocr"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("ofa-predict: error: unknown task 'ocr'") and "grounding" in err
    assert len(err.strip().splitlines()) == 1


def test_draw_result_keeps_degenerate_boxes_visible():
    image = Image.new("RGB", (80, 50), (255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    result = {"task": "refcoco", "box": [40.0, 25.0, 40.0, 25.0], "logprob": -1.0, "prob": 0.37, "score": -0.2,
              "image_size": [80, 50]}
    drawn = inf.draw_result(buf.getvalue(), result, label="dot")
    assert drawn.size == (80, 50)
    assert drawn.getpixel((40, 25)) != (255, 255, 255) or drawn.getpixel((41, 26)) != (255, 255, 255)
