"""ONNX export (``ofa-export onnx``) and the torch-free runtime (``ofa_runtime``) against the PyTorch model.

- the exported encoder and decoder step equal the model's within 1e-4 (other batch and source sizes than
  the graphs were traced with, padding, an empty and a growing cache);
- ``ofa_runtime.BeamSearch`` gives ``SequenceGenerator``'s hypotheses token for token (scores within 1e-4):
  free decoding with n-gram blocking and ``min_len``, a token range (boxes), an answer trie with and without a
  forced prompt;
- ``ofa-predict --onnx`` equals ``ofa-predict --checkpoint`` for grounding, captioning and VQA (by trie beam
  search), and the runtime runs in an interpreter that never imports torch or fairseq.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from conftest import make_dictionary, randomize_  # noqa: E402
from ofa.export.graphs import EncoderGraph  # noqa: E402
from ofa.generate import SequenceGenerator, Trie  # noqa: E402

PATCH = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomised ``ofa_test`` model on the synthetic vocabulary and its ONNX export."""
    from ofa.export import export_onnx
    from ofa.model import OFAModel, config_for_arch

    d = make_dictionary()
    torch.manual_seed(0)
    model = randomize_(OFAModel.from_config(config_for_arch("ofa_test"), d)).eval()
    out = tmp_path_factory.mktemp("onnx") / "export"
    export_onnx(model, str(out), tokenizer_dir=str(out.parent), image_size=PATCH, dictionary=d)
    return model, d, str(out)


def _inputs(seed: int = 1, batch: int = 3, length: int = 11):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 40, (batch, length), generator=g)
    src[:, 0], src[:, -1] = 0, 2
    src[1, -4:], src[1, -5] = 1, 2  # a padded row in the middle of the batch
    return src, torch.randn(batch, 3, PATCH, PATCH, generator=g)


def test_exported_graphs_equal_the_model(tiny):
    from ofa_runtime import OnnxModel

    model, d, out = tiny
    onnx_model = OnnxModel(out)
    src, img = _inputs()
    with torch.no_grad():
        ref = EncoderGraph(model)(src, img, torch.ones(3, dtype=torch.bool))
    enc = onnx_model.encode(src.numpy(), img.numpy())
    assert np.array_equal(enc.padding_mask, ref[1].numpy())
    np.testing.assert_allclose(enc.cross_pos_k, ref[2].numpy(), atol=1e-4)
    for a, b in zip(enc.cross, ref[3:]):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    # the decoder step against the model's own incremental decoding, from an empty cache
    with torch.no_grad():
        enc_out = model.encoder(src, patch_images=img)
    state, tokens = {}, torch.zeros(3, 1, dtype=torch.long)
    past = onnx_model.empty_cache(3)
    for _ in range(5):
        with torch.no_grad():
            logits, _ = model.decoder(tokens, encoder_out=enc_out, incremental_state=state)
        got, past = onnx_model.step(tokens[:, -1:].numpy(), enc, past)
        np.testing.assert_allclose(got, logits[:, -1].numpy(), atol=1e-4)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert past[0].shape[2] == 5


ANSWERS = [[0, 5, 6, 2], [0, 5, 7, 2], [0, 8, 2], [0, 9, 10, 11, 2], [0, 12, 2], [0, 13, 5, 2], [0, 14, 2]]


@pytest.mark.parametrize("kind,settings", [
    ("free", dict(beam_size=3, max_len_b=8)),
    ("free", dict(beam_size=4, max_len_b=6, no_repeat_ngram_size=2, min_len=3, len_penalty=0.5)),
    ("bins", dict(beam_size=3, max_len_b=4, min_len=4)),
    ("trie", dict(beam_size=5, max_len_b=10, normalize_scores=False)),
    ("trie", dict(beam_size=9, max_len_b=10)),  # fewer answers than beams
    ("trie+prompt", dict(beam_size=5, max_len_b=12, normalize_scores=False)),
])
def test_runtime_beam_search_equals_the_sequence_generator(tiny, kind, settings):
    from ofa_runtime import BeamSearch, OnnxModel

    model, d, out = tiny
    src, img = _inputs()
    ours, theirs = dict(settings), dict(settings)
    prefix = None
    if kind == "bins":
        ours["constraint_range"] = theirs["constraint_range"] = f"{len(d) - 1000},{len(d)}"
    if kind.startswith("trie"):
        trie = Trie(d.eos())
        for seq in ANSWERS:
            trie.insert(seq)
        theirs["constraint_trie"], ours["constraint_trie"] = trie, ANSWERS
    if kind == "trie+prompt":
        prefix = torch.tensor([[15, 16, 17], [18, 19, 1], [20, 1, 1]])
    sample = {"net_input": {"src_tokens": src, "src_lengths": src.ne(1).sum(1), "patch_images": img}}
    ref = SequenceGenerator(model, d, **theirs).generate([model], sample, prefix_tokens=prefix)
    got = BeamSearch(OnnxModel(out), **ours).generate(src.numpy(), img.numpy(),
                                                      None if prefix is None else prefix.numpy())
    for r, o in zip(ref, got):
        assert [h["tokens"].tolist() for h in r] == [h["tokens"].tolist() for h in o]
        np.testing.assert_allclose([float(h["score"]) for h in r], [h["score"] for h in o], atol=1e-4)
        np.testing.assert_allclose(r[0]["positional_scores"].numpy(), o[0]["positional_scores"], atol=1e-4)
    if kind == "bins":
        assert all(len(h["tokens"]) == 5 and (h["tokens"][:4] >= len(d) - 1000).all() for s in got for h in s)


# ------------------------------------------------------------------------------ the commands, end to end
@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Checkpoints of one randomised model for grounding, captioning and VQA, and their ``ofa-export onnx``
    folders (tokenizer: SentencePiece trained on the synthetic benchmark's text)."""
    from ofa.checkpoint import save_checkpoint
    from ofa.cli import export
    from ofa.data_utils.images import decode_b64
    from ofa.model import OFAModel, config_for_arch
    from ofa.tokenizer import load_tokenizer, train_sentencepiece
    from ofa_synth.writer import main as synth_main

    root = tmp_path_factory.mktemp("onnx_e2e")
    data = root / "synth"
    synth_main([str(data), "--num-images", "12", "--image-size", "64", "--seed", "0", "--quiet"])
    tok_dir = train_sentencepiece(str(data / "text_corpus.txt"), str(root / "tok"), vocab_size=400)
    torch.manual_seed(0)
    model = randomize_(OFAModel.from_config(config_for_arch("ofa_test"), load_tokenizer(tok_dir).dictionary))
    common = {"bpe_dir": tok_dir, "patch_image_size": PATCH, "max_image_size": PATCH, "eval_beam": 3}
    tasks = {"refcoco": {}, "caption": {"eval_max_len_b": 8},
             "vqa_gen": {"ans2label_file": str(data / "vqa_ans2label.json"), "prompt_type": "prev_output"}}
    out = {}
    for name, extra in tasks.items():
        ckpt = root / f"{name}.pt"
        save_checkpoint(model, str(ckpt), task_cfg={"_name": name, **common, **extra})
        folder = root / f"{name}_onnx"
        assert export.main(["onnx", str(ckpt), str(folder)]) == 0
        out[name] = (str(ckpt), str(folder))
    with open(data / "refcoco_test.tsv") as f:
        image = decode_b64(f.readline().rstrip("\n").split("\t")[-1]).resize((90, 70))
    image.save(root / "scene.png")
    return out, str(root / "scene.png")


def _predict_json(capsys, argv):
    from ofa.cli import predict

    assert predict.main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("task,text,extra", [
    ("refcoco", "the red circle", []),
    ("caption", None, []),
    ("vqa_gen", "what color is the circle?", ["--set", "val_inference_type=beamsearch"]),
])
def test_predict_onnx_equals_predict_checkpoint(exports, capsys, task, text, extra):
    paths, image = exports
    ckpt, folder = paths[task]
    args = ["--image", image, image] + (["--text", text] if text else [])
    ref = _predict_json(capsys, ["--checkpoint", ckpt] + args + extra)
    got = _predict_json(capsys, ["--onnx", folder] + args)
    key = {"refcoco": "box", "caption": "caption", "vqa_gen": "answer"}[task]
    for r, o in zip(ref, got):
        assert r[key] == o[key]
        assert o["logprob"] == pytest.approx(r["logprob"], abs=1e-3)
        assert o["image_size"] == r["image_size"] == [90, 70]


def test_runtime_needs_neither_torch_nor_fairseq(exports):
    paths, image = exports
    folder = paths["refcoco"][1]
    code = (
        "import sys, numpy as np\n"
        "from ofa_runtime import BeamSearch, OnnxModel\n"
        f"m = OnnxModel({folder!r})\n"
        "tok = m.tokenizer()\n"
        "search = BeamSearch.from_export(m)\n"
        "src = tok.batch([' which region does the text \" the red circle \" describe?'])\n"
        f"hyps = search.generate(src, m.preprocess([{image!r}]))\n"
        "assert len(hyps[0][0]['tokens']) == 5, hyps\n"
        "assert tok.decode(hyps[0][0]['tokens']).count('<bin_') == 4\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'fairseq', 'ofa')]\n"
        "print('imported:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_generation_settings_are_the_tasks(exports):
    paths, _ = exports
    with open(os.path.join(paths["refcoco"][1], "generation.json")) as f:
        gen = json.load(f)
    assert gen["beam_size"] == 3 and gen["max_len_b"] == 4 and gen["min_len"] == 4
    assert gen["constraint_range"] is not None and gen["constraint_trie"] is None
    with open(os.path.join(paths["vqa_gen"][1], "generation.json")) as f:
        gen = json.load(f)
    assert gen["constraint_trie"] and gen["normalize_scores"] is False
    assert os.path.isfile(os.path.join(paths["vqa_gen"][1], "answers.txt"))


def test_a_failed_export_leaves_the_previous_one(exports, monkeypatch, tmp_path):
    from ofa.cli import export

    paths, _ = exports
    ckpt, folder = paths["caption"]
    before = sorted(os.listdir(folder))
    stamp = os.path.getmtime(os.path.join(folder, "encoder.onnx"))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError):
        export.export_command(["onnx", ckpt, folder])
    assert sorted(os.listdir(folder)) == before
    assert os.path.getmtime(os.path.join(folder, "encoder.onnx")) == stamp
    parent = os.path.dirname(folder)
    assert not [n for n in os.listdir(parent) if n.startswith(".")], "temporary folders left behind"


def test_predict_onnx_mistakes_are_one_line(exports, tmp_path, capsys):
    from ofa.cli import predict

    paths, image = exports
    assert predict.main(["--onnx", str(tmp_path / "missing"), "--image", image]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert predict.main(["--onnx", str(tmp_path / "empty"), "--image", image]) == 2
    err = capsys.readouterr().err
    assert "onnx_config.json" in err and len(err.strip().splitlines()) == 1
    assert predict.main(["--onnx", paths["caption"][1], "--image", image, "--device", "cpu"]) == 2
    assert "--device does not apply to --onnx" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the official reference checkpoint
@pytest.fixture(scope="module")
def reference_export(reference_dir, bpe_dir, tmp_path_factory):
    from ofa.checkpoint import load_model
    from ofa.export import export_onnx

    model, d, _ = load_model(str(reference_dir / "ofa_micro_a.pt.gz"), bpe_dir=bpe_dir)
    expected = torch.load(reference_dir / "ofa_micro_a.expected.pt", weights_only=False)
    out = tmp_path_factory.mktemp("reference_onnx") / "export"
    size = expected["inputs"]["patch_images"].shape[-1]
    export_onnx(model, str(out), tokenizer_dir=bpe_dir, image_size=size, dictionary=d)
    return model, d, str(out), expected


def test_reference_export_reproduces_the_official_outputs(reference_export):
    """The official outputs (encoder states and the three generations of ../shared/reference), from the ONNX
    graphs and the numpy beam search; the third sample is text-only (its image masked)."""
    from ofa_runtime import BeamSearch, OnnxModel

    model, d, out, expected = reference_export
    inp = expected["inputs"]
    onnx_model = OnnxModel(out)
    src, img, masks = (inp[k].numpy() for k in ("src_tokens", "patch_images", "patch_masks"))
    enc = onnx_model.encode(src, img, masks)
    assert np.array_equal(enc.padding_mask, expected["encoder_padding_mask"].numpy())
    with torch.no_grad():
        ref = EncoderGraph(model)(inp["src_tokens"], inp["patch_images"], inp["patch_masks"])
    for a, b in zip([enc.cross_pos_k, *enc.cross], ref[2:]):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    gen = expected["generation"]
    runs = {"free": dict(beam_size=3, max_len_b=6, min_len=1),
            "bins": dict(beam_size=3, max_len_b=4, min_len=4, constraint_range="58457,59457"),
            "trie": dict(beam_size=3, max_len_b=8, min_len=1, constraint_trie=[list(t) for t in expected["trie_ids"]])}
    for name, settings in runs.items():
        hyps = BeamSearch(onnx_model, **settings).generate(src, img, patch_masks=masks)
        assert [[h["tokens"].tolist() for h in s] for s in hyps] == [[list(t) for t in s] for s in gen[name]], name
    hyps = BeamSearch(onnx_model, **runs["free"]).generate(src, img, patch_masks=masks)
    np.testing.assert_allclose([[h["score"] for h in s] for s in hyps], np.array(gen["free_scores"]), atol=1e-4)


def test_reference_decoder_step_matches_the_model(reference_export):
    from ofa_runtime import OnnxModel

    model, d, out, expected = reference_export
    inp = expected["inputs"]
    onnx_model = OnnxModel(out)
    enc = onnx_model.encode(*(inp[k].numpy() for k in ("src_tokens", "patch_images", "patch_masks")))
    with torch.no_grad():
        enc_out = model.encoder(inp["src_tokens"], patch_images=inp["patch_images"], patch_masks=inp["patch_masks"])
    prev = inp["prev_output_tokens"]
    state, past = {}, onnx_model.empty_cache(prev.size(0))
    for t in range(prev.size(1)):
        with torch.no_grad():
            logits, _ = model.decoder(prev[:, :t + 1], encoder_out=enc_out, incremental_state=state)
        got, past = onnx_model.step(prev[:, t:t + 1].numpy(), enc, past)
        np.testing.assert_allclose(got, logits[:, -1].numpy(), atol=1e-4)


# ------------------------------------------------------------------------------ torch-free inputs
def test_runtime_tokenizer_and_images_equal_the_projects(exports, tmp_path):
    from ofa.data_utils.transforms import square_resize
    from ofa.tokenizer import load_tokenizer
    from ofa_runtime import OnnxModel

    paths, image = exports
    model = OnnxModel(paths["caption"][1])
    ours = model.tokenizer()
    theirs = load_tokenizer(paths["caption"][1])
    assert len(ours) == len(theirs.dictionary) == model.vocab_size
    for text in (" what does the image describe?", "a red circle <bin_3> <bin_999> left of <code_7> the star",
                 "unknownwordzz 12 , éclair"):
        ids = ours.encode(text)
        assert ids == theirs.encode(text).tolist()
        assert ours.decode(ids) == theirs.decode(ids)
    np.testing.assert_array_equal(model.preprocess([image])[0], square_resize(
        __import__("PIL.Image", fromlist=["Image"]).open(image).convert("RGB"), PATCH).numpy())


def test_runtime_gpt2_tokenizer_equals_the_official_bpe(bpe_dir):
    from ofa.tokenizer import load_tokenizer
    from ofa_runtime import Tokenizer

    ours, theirs = Tokenizer(bpe_dir), load_tokenizer(bpe_dir)
    assert len(ours) == len(theirs.dictionary)
    for text in (" which region does the text \" the man's left hand \" describe?", "what's 3.5 + 12?  ok\n",
                 " a <bin_12> b <code_40> naïve café 東京", "   "):
        ids = ours.encode(text)
        assert ids == theirs.encode(text).tolist(), text
        assert ours.decode(ids) == theirs.decode(ids)


def test_export_of_a_lora_checkpoint_merges_the_adapters(spm_dir, tmp_path):
    """``ofa-export onnx`` of a checkpoint with LoRA adapters: plain graphs whose outputs are the unmerged
    (peft) model's."""
    pytest.importorskip("peft")
    from ofa.checkpoint import save_checkpoint
    from ofa.cli import export
    from ofa.model import OFAModel, config_for_arch
    from ofa.tokenizer import load_tokenizer
    from ofa_runtime import OnnxModel

    d = load_tokenizer(spm_dir).dictionary
    torch.manual_seed(0)
    lora = randomize_(OFAModel.from_config(config_for_arch("ofa_test", lora_rank=4, lora_alpha=8), d)).eval()
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # peft starts B at zero: make the adapters change the outputs
    path = tmp_path / "lora.pt"
    save_checkpoint(lora, str(path), task_cfg={"_name": "caption", "bpe_dir": spm_dir, "patch_image_size": PATCH})
    assert export.main(["onnx", str(path), str(tmp_path / "exp")]) == 0
    onnx_model = OnnxModel(str(tmp_path / "exp"))
    src, img = _inputs()
    with torch.no_grad():
        ref = EncoderGraph(lora)(src, img, torch.ones(3, dtype=torch.bool))
        enc_out = lora.encoder(src, patch_images=img)
        logits, _ = lora.decoder(torch.zeros(3, 1, dtype=torch.long), encoder_out=enc_out, incremental_state={})
    enc = onnx_model.encode(src.numpy(), img.numpy())
    for a, b in zip(enc.cross, ref[3:]):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    got, _ = onnx_model.step(np.zeros((3, 1), np.int64), enc, onnx_model.empty_cache(3))
    np.testing.assert_allclose(got, logits[:, -1].numpy(), atol=1e-4)
