"""Batched inference (``inference_model`` / ``InferenceHandle.predict`` on lists of images), the one meaning of
``logprob`` / ``prob`` across tasks, the task-mismatch warning, and ``ofa-predict``'s several images and
one-line errors (exit status 2).

One module-scoped fixture builds an untrained ``ofa_test`` model on the shared SentencePiece tokenizer
(``conftest.spm_dir``) and saves it as fairseq checkpoints for each task (and as a ``unify`` pretraining
checkpoint); three images of different sizes and contents, and texts of different lengths, make batches
whose inputs are padded differently from single calls.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image, ImageDraw

import ofa.inference as inf
from model_helpers import check_logprob, save_tiny_vqgan
from ofa.cli import predict
from ofa.errors import ConfigError

SIZES = [(100, 72), (64, 64), (48, 90)]
TEXTS = ["the large green square", "red", "what is on the left of the small blue circle"]
PATCH = 64


def _scene(size, color, seed):
    img = Image.new("RGB", size, (230, 230, 230))
    d = ImageDraw.Draw(img)
    w, h = size
    d.rectangle([w * 0.1, h * 0.2, w * (0.4 + 0.1 * seed), h * 0.7], fill=color)
    d.ellipse([w * 0.5, h * 0.1, w * 0.9, h * (0.5 + 0.1 * seed)], fill=(40, 40, 200))
    return img


@pytest.fixture(scope="module")
def env(spm_dir, tmp_path_factory):
    from ofa.checkpoint import save_checkpoint
    from ofa.model import OFAModel, config_for_arch
    from ofa.tokenizer import load_tokenizer

    saved_cache_size = inf.CACHE_SIZE
    inf.CACHE_SIZE = 16  # keep every test checkpoint loaded
    root = tmp_path_factory.mktemp("batch")
    answers = root / "answers.txt"
    answers.write_text("red\ngreen\nblue\nyellow\ntwo\nthree\nsquare\ncircle\n")
    classes = root / "classes.txt"
    classes.write_text("red square\nblue circle\ngreen star\nyellow triangle\n")
    torch.manual_seed(0)
    model = OFAModel.from_config(config_for_arch("ofa_test"), load_tokenizer(spm_dir).dictionary)
    common = {"bpe_dir": spm_dir, "patch_image_size": PATCH, "max_image_size": PATCH, "eval_beam": 3}
    task_cfgs = {
        "caption": {"eval_max_len_b": 6},
        "refcoco": {},
        "vqa_gen": {"ans2label_file": str(answers)},
        "snli_ve": {},
        "image_classify": {"ans2label_file": str(classes)},
        "image_text_match": {},
        "unify": {},
    }
    ckpt = {}
    for name, extra in task_cfgs.items():
        ckpt[name] = str(root / f"{name}.pt")
        save_checkpoint(model, ckpt[name], task_cfg={"_name": name, **common, **extra})
    images = []
    for i, (size, color) in enumerate(zip(SIZES, [(20, 160, 20), (200, 30, 30), (220, 200, 20)])):
        path = root / f"scene{i}.png"
        _scene(size, color, i).save(path)
        images.append(str(path))
    yield {"root": root, "ckpt": ckpt, "images": images}
    inf.clear_cache()
    inf.CACHE_SIZE = saved_cache_size


def _same(single, batched):
    """Batched and single results agree: the same prediction (tokens), scores within 1e-5."""
    assert set(single) == set(batched)
    for key, value in single.items():
        if key in ("logprob", "prob", "score") or isinstance(value, float):
            assert batched[key] == pytest.approx(value, abs=1e-5), key
        elif key == "top":
            assert [a for a, _ in batched[key]] == [a for a, _ in value]
            assert [p for _, p in batched[key]] == pytest.approx([p for _, p in value], abs=1e-5)
        else:
            assert batched[key] == value, key


# (task, keyword arguments): every registered task a tiny image checkpoint runs (image_gen: below)
TASKS = [
    ("caption", {}),
    ("refcoco", {"text": TEXTS}),
    ("vqa_gen", {"text": TEXTS}),
    ("snli_ve", {"text": TEXTS, "caption": [None, "a red square", None]}),
    ("image_classify", {}),
    ("image_text_match", {"text": TEXTS}),
]


@pytest.mark.parametrize("task,kwargs", TASKS, ids=[t for t, _ in TASKS])
def test_a_batch_gives_the_single_image_results(env, task, kwargs):
    images = env["images"]
    batched = inf.inference_model(env["ckpt"][task], images, batch_size=2, device="cpu", **kwargs)
    assert isinstance(batched, list) and len(batched) == len(images)
    for i, image in enumerate(images):
        one = {k: (v[i] if isinstance(v, list) else v) for k, v in kwargs.items()}
        single = inf.inference_model(env["ckpt"][task], image, device="cpu", **one)
        assert isinstance(single, dict) and single["task"] == task
        assert single["image_size"] == list(SIZES[i])
        check_logprob(single)
        _same(single, batched[i])


@pytest.mark.parametrize("task,kwargs", TASKS, ids=[t for t, _ in TASKS])
def test_a_batch_is_one_encoder_pass(env, task, kwargs):
    handle = inf.load(env["ckpt"][task])
    calls = []
    hook = handle.model.encoder.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        kwargs = {k: v for k, v in kwargs.items() if k != "caption"}  # a premise or none: one group
        results = handle.predict(env["images"], batch_size=3, device="cpu", **kwargs)
    finally:
        hook.remove()
    assert len(results) == 3 and len(calls) == 1


def test_handle_predict_and_call_return_one_result_or_a_list(env):
    handle = inf.load(env["ckpt"]["refcoco"])
    one = handle.predict(env["images"][0], text="the square", device="cpu")
    assert isinstance(one, dict) and one["task"] == "refcoco"
    many = handle(env["images"][:2], text="the square", batch_size=1, device="cpu")
    assert isinstance(many, list) and len(many) == 2 and many[0] == one
    assert handle.predict([], text="the square") == []


def test_one_text_for_all_images_equals_the_text_repeated(env):
    ckpt, images = env["ckpt"]["vqa_gen"], env["images"]
    a = inf.inference_model(ckpt, images, text="what colour?", batch_size=3, device="cpu")
    b = inf.inference_model(ckpt, images, text=["what colour?"] * 3, batch_size=3, device="cpu")
    assert a == b


@pytest.mark.parametrize("kwargs,error,message", [
    ({"text": ["a", "b"]}, inf.InputError, r"text= has 2 entries for 3 inputs"),
    ({"text": "a", "batch_size": 0}, ConfigError, r"batch_size=0 is out of range \[1, inf\]"),
    ({"text": "a", "out": "x.png"}, ConfigError, r"task 'refcoco' generates none"),
    ({"text": "a", "beam_sise": 2}, TypeError, r"unknown option 'beam_sise' \(did you mean 'beam_size'\?\)"),
    ({"text": "a", "beam_size": 0}, ConfigError, r"beam_size=0 is out of range \[1, inf\]"),
    ({"text": "a", "temperature": 0.0}, ConfigError, r"temperature=0.0 must be > 0"),
    ({"text": "a", "device": "gpu7"}, ConfigError, r"device='gpu7' is not a torch device"),
    ({}, inf.InputError, r"task 'refcoco' needs text \(text= / --text\): the referring expression"),
])
def test_mistakes_in_a_call_are_one_line_user_errors(env, kwargs, error, message):
    from ofa.errors import UserError

    with pytest.raises(error, match=message) as e:
        inf.inference_model(env["ckpt"]["refcoco"], env["images"], **kwargs)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


def test_a_text_list_needs_a_list_of_images(env):
    with pytest.raises(inf.InputError, match="text= is a list but image= is one image"):
        inf.inference_model(env["ckpt"]["refcoco"], env["images"][0], text=["a", "b"])


def test_an_image_that_does_not_decode_is_named(env, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(inf.InputError, match=r"image .*broken.png does not decode"):
        inf.inference_model(env["ckpt"]["caption"], [env["images"][0], str(bad)])


# ------------------------------------------------------------------------------------------- task mismatch
def test_a_finetuned_checkpoint_asked_for_another_task_warns_once(env):
    handle = inf.load(env["ckpt"]["caption"])
    handle._warned.clear()
    with pytest.warns(inf.TaskMismatchWarning) as record:
        inf.inference_model(env["ckpt"]["caption"], env["images"][0], task="vqa", text="what?")
        inf.inference_model(env["ckpt"]["caption"], env["images"][0], task="vqa_gen", text="what?")
    mismatch = [w for w in record if issubclass(w.category, inf.TaskMismatchWarning)]
    assert len(mismatch) == 1
    message = str(mismatch[0].message)
    assert "'caption'" in message and "'vqa_gen'" in message and "\n" not in message


def test_own_task_and_pretrained_checkpoints_do_not_warn(env):
    with warnings.catch_warnings():
        warnings.simplefilter("error", inf.TaskMismatchWarning)
        inf.inference_model(env["ckpt"]["caption"], env["images"][0])
        inf.inference_model(env["ckpt"]["caption"], env["images"][0], task="captioning")
        inf.inference_model(env["ckpt"]["unify"], env["images"][0], task="caption")
        inf.inference_model(env["ckpt"]["unify"], env["images"][0], task="grounding", text="the square")


# ------------------------------------------------------------------------------------------- ofa-predict
def test_cli_runs_several_images_and_prints_a_json_list(env, capsys):
    rc = predict.main(["--checkpoint", env["ckpt"]["vqa_gen"], "--image", *env["images"], "--text", "what colour?",
                       "--batch-size", "2", "--device", "cpu", "--json"])
    assert rc == 0
    results = json.loads(capsys.readouterr().out)
    assert isinstance(results, list) and len(results) == 3
    singles = [inf.inference_model(env["ckpt"]["vqa_gen"], im, text="what colour?", device="cpu")
               for im in env["images"]]
    for r, s in zip(results, singles):
        assert r["answer"] == s["answer"] and r["logprob"] == pytest.approx(s["logprob"], abs=1e-5)


def test_cli_prints_one_block_per_image_and_draws_each(env, tmp_path, capsys):
    draw = tmp_path / "drawn.png"
    rc = predict.main(["--checkpoint", env["ckpt"]["refcoco"], "--image", env["images"][0], "--image",
                       env["images"][2], "--text", "the square", "--draw", str(draw), "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("task: refcoco") == 2 and out.count("logprob:") == 2
    assert f"image: {env['images'][2]}" in out and f"drawn: {tmp_path / 'drawn_1.png'}" in out
    with Image.open(tmp_path / "drawn_1.png") as second:
        assert second.size == SIZES[2]


@pytest.mark.parametrize("args,message", [
    (["--image", "nope.png"], "--image nope.png: no such file"),
    (["--checkpoint", "missing/ckpt.pt"], "checkpoint path does not exist"),
    (["--task", "captoin"], "unknown task 'captoin'; did you mean caption or captioning"),
    (["--task", "vqa"], "task 'vqa_gen' needs text (text= / --text): the question"),
    (["--set", "beam_size"], "--set expects KEY=VALUE, got 'beam_size'"),
    (["--set", "beam_sise=2"], "unknown option 'beam_sise' (did you mean 'beam_size'?)"),
    (["--set", "beam_size=two"], "beam_size='two' is not an integer"),
    (["--user-dir", "no/such/plugin"], "--user-dir no/such/plugin: no such folder"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
])
def test_cli_mistakes_are_one_line_with_status_2(env, capsys, args, message):
    base = {"--checkpoint": env["ckpt"]["caption"], "--image": env["images"][0]}
    argv = []
    for flag, value in base.items():
        if flag not in args:
            argv += [flag, value]
    rc = predict.main(argv + args + ["--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == f"ofa-predict: error: {message}" or lines[-1].startswith(f"ofa-predict: error: {message}")
    assert "Traceback" not in err and err.count("ofa-predict: error:") == 1


# ------------------------------------------------------------------------------------------- image_gen
SIDE, CODES = 32, 64


@pytest.fixture(scope="module")
def image_gen_ckpt(spm_dir, tmp_path_factory):

    from ofa.checkpoint import save_checkpoint
    from ofa.model import OFAModel, config_for_arch
    from ofa.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("image_gen_batch")
    save_tiny_vqgan(root / "vq", CODES)
    model = OFAModel.from_config(config_for_arch("ofa_test", code_image_size=SIDE),
                                 load_tokenizer(spm_dir, CODES, 8).dictionary)
    path = root / "image_gen.pt"
    save_checkpoint(model, str(path), task_cfg={
        "_name": "image_gen", "bpe_dir": spm_dir, "code_dict_size": CODES, "num_bins": 8, "code_image_size": SIDE,
        "patch_image_size": 16, "vqgan_path": str(root / "vq"), "sampling_topk": 8, "sampling_times": 2})
    return str(path), root


def test_image_gen_batch_of_captions_gives_logprob_of_the_best_sample(image_gen_ckpt, tmp_path):
    ckpt, _ = image_gen_ckpt
    outs = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    results = inf.inference_model(ckpt, text=["a red circle", "two blue squares on the grass"], batch_size=2,
                                  device="cpu", out=outs)
    assert len(results) == 2
    n = (SIDE // 8) ** 2
    for r, out in zip(results, outs):
        assert r["task"] == "image_gen" and r["image_size"] == [SIDE, SIDE] and r["paths"][0] == out
        assert len(r["codes"]) == 2 and len(r["codes"][0]) == n
        check_logprob(r)
        assert r["score"] == pytest.approx(r["logprob"] / (n + 1), abs=1e-5)  # the mean over codes and EOS
        assert r["score"] == max(r["scores"])
    with pytest.raises(inf.InputError, match="out= names one PNG for 2 inputs"):
        inf.inference_model(ckpt, text=["a", "b"], out=str(tmp_path / "c.png"))
    with pytest.raises(inf.InputError, match="takes no input image"):
        inf.inference_model(ckpt, "x.png", text="a")
