"""Text-to-image (``image_gen``): samples, bad rows, training steps, constrained sampling, VQGAN decoding,
``ofa-evaluate`` / ``ofa-predict`` / ``ofa.inference_model`` on tiny synthetic data (32 px scenes, a
tiny random factor-8 VQGAN with 64 codes: 4 x 4 = 16 codes per image)."""
import json
import os

import pytest
import torch
from PIL import Image

from model_helpers import save_tiny_vqgan

from ofa.data_utils.errors import DataError
from ofa.data_utils.image_gen_dataset import PROMPT, ImageGenDataConfig, ImageGenDataset
from ofa.data_utils.readers import open_reader

SIZE, CODES, N = 32, 64, 16


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from ofa.tokenizer import load_tokenizer, train_sentencepiece
    from ofa_synth.image_gen import main as synth_main

    out = tmp_path_factory.mktemp("image_gen")
    save_tiny_vqgan(out / "vq", CODES)
    synth_main([str(out / "data"), "--vqgan", str(out / "vq"), "--num-images", "30", "--image-size", str(SIZE),
                "--quiet"])
    caps = [line.split("\t")[2].strip() for line in open(out / "data" / "image_gen_train.tsv")]
    train_sentencepiece((caps + ["what is the complete image? caption:"]) * 4, str(out / "tok"), vocab_size=300)
    return out, load_tokenizer(str(out / "tok"), CODES, 8)


def make_task(env, **kw):
    from ofa.tasks.image_gen import ImageGenConfig, ImageGenTask

    out, _ = env
    cfg = ImageGenConfig(bpe_dir=str(out / "tok"), code_dict_size=CODES, num_bins=8, code_image_size=SIZE,
                         patch_image_size=16, vqgan_path=str(out / "vq"), seed=1, num_workers=0, **kw)
    return ImageGenTask.setup_task(cfg)


def make_model(task):
    from ofa.model.config import config_for_arch
    from ofa.model.ofa_model import OFAModel

    torch.manual_seed(0)
    return OFAModel.from_config(config_for_arch("ofa_test", code_image_size=SIZE), task.dict)


def dataset(env, path=None, split="train"):
    out, tok = env
    cfg = ImageGenDataConfig(patch_image_size=16, max_src_length=64, code_image_size=SIZE, code_vocab_size=CODES)
    reader = open_reader(str(path or out / "data" / "image_gen_train.tsv"), schema="image_gen",
                         columns=list(ImageGenDataset.columns))
    return ImageGenDataset(reader, tok, cfg, split)


def test_synth_rows_and_caption_names_the_main_object(env):
    out, _ = env
    manifest = json.load(open(out / "data" / "image_gen_manifest.json"))
    assert manifest["codes_per_image"] == N and sum(manifest["rows"].values()) == 30
    gen = [line.rstrip("\n").split("\t") for line in open(out / "data" / "image_gen_train.tsv")]
    imgs = [line.rstrip("\n").split("\t") for line in open(out / "data" / "image_gen_train_images.tsv")]
    assert len(gen) == len(imgs)
    for (uid, code, cap), (_, _, label) in zip(gen, imgs):
        assert len(code.split()) == N and all(0 <= int(c) < CODES for c in code.split())
        color, shape = label.split()
        assert f"{color} {shape}" in cap


def test_sample_construction(env):
    out, tok = env
    ds = dataset(env)
    ex = ds[0]
    row = open(out / "data" / "image_gen_train.tsv").readline().rstrip("\n").split("\t")
    codes = torch.tensor([int(c) for c in row[1].split()])
    assert tok.decode(ex["source"]).strip() == PROMPT.format(row[2]).strip()
    assert ex["source"][0] == ds.bos and ex["source"][-1] == ds.eos
    assert torch.equal(ex["target"], torch.cat([codes + tok.vocab.code_start, torch.tensor([ds.eos])]))
    assert torch.equal(ex["prev_output_tokens"], torch.cat([torch.tensor([ds.bos]), codes + tok.vocab.code_start]))
    batch = ds.collater([ds[0], ds[1], ds[2]])
    net = batch["net_input"]
    assert net["code_masks"].tolist() == [True] * 3 and net["patch_masks"].tolist() == [False] * 3
    assert net["patch_images"].shape == (3, 3, 16, 16) and not bool(net["patch_images"].any())
    assert batch["target"].shape == (3, N + 1) and batch["codes"].shape == (3, N)


def test_pre_caption_and_inference_rows_without_codes(env, tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("7\t\tA Red-Circle, big!\n")
    ex = dataset(env, path, split="test")[0]
    assert ex["caption"] == "a red circle, big!" and ex["target"].tolist() == [2]
    with pytest.raises(DataError, match="field 'code'"):
        dataset(env, path, split="train")[0]


@pytest.mark.parametrize("code, message", [
    (" ".join(["1"] * (N - 1)), f"{N - 1} image codes, expected {N}"),
    (" ".join(["1"] * (N - 1) + ["x2"]), "'x2' is not a non-negative integer"),
    (" ".join(["1"] * (N - 1) + ["1.5"]), "'1.5' is not a non-negative integer"),
    (" ".join(["1"] * (N - 1) + [str(CODES)]), "must lie in"),
    (" ".join(["1"] * (N - 1) + ["-1"]), "'-1' is not a non-negative integer"),
])
def test_bad_row_names_file_row_and_field(env, tmp_path, code, message):
    good = " ".join(["3"] * N)
    path = tmp_path / "bad.tsv"
    path.write_text(f"0\t{good}\ta red circle\n1\t{code}\ta blue star\n")
    ds = dataset(env, path)
    ds[0]
    with pytest.raises(DataError) as e:
        ds[1]
    text = str(e.value)
    assert str(path) in text and "line 2" in text and "field 'code'" in text and message in text


def test_training_steps_reduce_loss(env):
    from ofa.criterions.label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion

    task = make_task(env)
    model = make_model(task)
    crit = AdjustLabelSmoothedCrossEntropyCriterion(task, sentence_avg=False)
    assert crit.constraint_range is None
    from omegaconf import OmegaConf

    crit = task.build_criterion(OmegaConf.create({"_name": "adjust_label_smoothed_cross_entropy", "sentence_avg": False}))
    assert crit.constraint_range == (task.vocab.code_start, task.vocab.code_start + CODES)
    ds = dataset(env)
    batch = ds.collater([ds[i] for i in range(8)])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(12):
        loss, size, _ = crit(model, batch)
        opt.zero_grad()
        (loss / size).backward()
        opt.step()
        losses.append(float(loss / size))
    assert losses[-1] < losses[0] - 0.3, losses


def test_generation_is_codes_only_and_decodes_to_png(env, tmp_path):
    task = make_task(env, sampling_topk=20, sampling_times=3)
    model = make_model(task)
    task.generator = task.build_generator([model])
    ds = dataset(env)
    batch = ds.collater([ds[0], ds[1]])
    batch["id"] = torch.tensor([0, 1])
    hyps = task.generate_codes(model, batch)
    assert len(hyps) == 2 and all(len(h) == 3 for h in hyps)
    raw = task.generator.generate([model], task.net_input_for_generation(batch))
    for per in raw:
        for h in per:
            toks = h["tokens"]
            assert toks.numel() == N + 1 and int(toks[-1]) == task.dict.eos()
            assert bool((toks[:-1] >= task.vocab.code_start).all() and (toks[:-1] < task.vocab.code_start + CODES).all())
    images = task.decode_images(torch.stack([h["codes"] for h in hyps[0]]))
    assert images.shape == (3, 3, SIZE, SIZE) and float(images.min()) >= -1 and float(images.max()) <= 1
    from ofa.vqgan.data import to_pil

    paths = task.save_images([to_pil(x) for x in images], "a/b", str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["a_b.png", "a_b_1.png", "a_b_2.png"]
    assert Image.open(paths[0]).size == (SIZE, SIZE)
    # the same seed gives the same draws
    again = task.generate_codes(model, batch)
    assert all(torch.equal(a["codes"], b["codes"]) for a, b in zip(hyps[0], again[0]))


def test_topk1_sampling_is_deterministic_and_greedy(env):
    task = make_task(env, sampling_topk=1, sampling_seed=-1)
    model = make_model(task)
    ds = dataset(env)
    batch = ds.collater([ds[0], ds[3]])
    net = task.net_input_for_generation(batch)
    torch.manual_seed(1)
    a = task.build_generator([model]).generate([model], net)
    torch.manual_seed(2)
    b = task.build_generator([model]).generate([model], net)
    greedy = task.build_generator([model], sampling=False, beam_size=1).generate([model], net)
    for x, y, g in zip(a, b, greedy):
        assert torch.equal(x[0]["tokens"], y[0]["tokens"]) and torch.equal(x[0]["tokens"], g[0]["tokens"])


@pytest.fixture(scope="module")
def checkpoint(env, tmp_path_factory):
    from ofa.cli.train import train as train_main

    out, _ = env
    ckpt = tmp_path_factory.mktemp("ckpt")
    data = out / "data"
    train_main([f"{data / 'image_gen_train.tsv'},{data / 'image_gen_valid.tsv'}", "--task", "image_gen",
                "--bpe-dir", str(out / "tok"), "--arch", "ofa_test", "--code-image-size", str(SIZE),
                "--vqgan-path", str(out / "vq"), "--code-dict-size", str(CODES), "--num-bins", "8",
                "--patch-image-size", "16", "--cpu", "--batch-size", "8", "--max-update", "2",
                "--optimizer", "adam", "--lr", "1e-3", "--criterion", "adjust_label_smoothed_cross_entropy",
                "--disable-validation", "--save-dir", str(ckpt), "--num-workers", "0", "--seed", "1",
                "--sampling-topk", "8", "--no-epoch-checkpoints"])
    return ckpt / "checkpoint_last.pt"


def test_cli_predict_writes_png(env, checkpoint, tmp_path, capsys):
    from ofa.cli.predict import main as predict_main

    out, _ = env
    png = tmp_path / "gen" / "img.png"
    rc = predict_main(["--checkpoint", str(checkpoint), "--task", "image_gen", "--text", "a red circle",
                       "--vqgan-path", str(out / "vq"), "--out", str(png), "--device", "cpu",
                       "--set", "sampling_times=2"])
    printed = capsys.readouterr().out
    assert rc == 0 and f"image: {png}" in printed
    assert Image.open(png).size == (SIZE, SIZE) and (tmp_path / "gen" / "img_1.png").is_file()


def test_inference_model_returns_images_and_score(env, checkpoint):
    import ofa

    out, _ = env
    res = ofa.inference_model(str(checkpoint), task="image_gen", text="a blue star on a plain background",
                              vqgan_path=str(out / "vq"), device="cpu")
    assert res["task"] == "image_gen" and res["image_size"] == [SIZE, SIZE]
    assert isinstance(res["images"][0], Image.Image) and len(res["codes"][0]) == N
    assert isinstance(res["score"], float) and res["score"] <= 0
    with pytest.raises(ValueError, match="needs text"):
        ofa.inference_model(str(checkpoint), task="image_gen", vqgan_path=str(out / "vq"), device="cpu")


def test_evaluate_writes_images_that_the_benchmark_checker_scores(env, checkpoint, tmp_path):
    from ofa.cli.evaluate import evaluate_command as evaluate_main
    from ofa_synth.image_gen import SceneChecker, check_generated, checker_scores, load_checker, save_checker
    from ofa_synth.vocab import COLOR_NAMES, SHAPES

    out, _ = env
    save_checker(SceneChecker(COLOR_NAMES, SHAPES, SIZE, width=4), str(tmp_path / "chk.pt"))
    checker = load_checker(str(tmp_path / "chk.pt"))
    assert checker.parse_caption("two red stars") == ("red", "star")
    rc = evaluate_main([str(out / "data" / "image_gen_test.tsv"), "--path", str(checkpoint), "--cpu",
                        "--results-path", str(tmp_path / "res"), "--gen-images-path", str(tmp_path / "img"),
                        "--batch-size", "4"])
    assert rc == 0
    metrics = json.load(open(tmp_path / "res" / "test_metrics.json"))
    preds = json.load(open(tmp_path / "res" / "test_predict.json"))
    assert {"code_acc", "code_nll", "sample_logprob"} <= set(metrics)
    assert all(len(p["codes"]) == N and os.path.isfile(p["image"]) for p in preds)
    checked = check_generated(checker, preds)
    assert [c["uniq_id"] for c in checked] == [p["uniq_id"] for p in preds]
    assert all(c["checker"][0] in COLOR_NAMES and c["checker"][1] in SHAPES for c in checked)
    assert all(c["label"] == checker.parse_caption(p["caption"]) for c, p in zip(checked, preds))
    scores = checker_scores(checked)
    assert set(scores) == {"checker_color_acc", "checker_shape_acc", "checker_both_acc"}
    assert 0 <= scores["checker_both_acc"] <= min(scores["checker_color_acc"], scores["checker_shape_acc"]) <= 1


def test_checker_scores_count_colour_shape_and_both():
    from ofa_synth.image_gen import checker_scores

    checked = [{"checker": ("red", "star"), "label": ("red", "star")},
               {"checker": ("red", "circle"), "label": ("red", "star")},
               {"checker": ("blue", "circle"), "label": ("red", "star")},
               {"checker": ("blue", "star"), "label": (None, "star")}]  # names no colour: not scored
    assert checker_scores(checked) == {"checker_color_acc": 2 / 3, "checker_shape_acc": 1 / 3, "checker_both_acc": 1 / 3}
    assert checker_scores([]) == {}
