"""Parameter-efficient finetuning on the tiny ``ofa_test`` preset: LoRA through peft (only the adapters train,
checkpoints keep them, loading and export merge them), restoring a plain checkpoint into a LoRA model, BitFit,
``--freeze`` patterns, activation checkpointing, and an ``ofa-train --lora-rank`` run."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_
from model_helpers import toy_batch
from ofa.checkpoint import export_safetensors, load_model, safe_load, save_checkpoint
from ofa.errors import ConfigError
from ofa.model import OFAModel, config_for_arch
from ofa.model.finetune import (adapt_plain_state, is_adapter_key, lora_scale, lora_target_regex, merge_lora_state,
                                trainable_counts)
from ofa.tokenizer import load_tokenizer



def build(dictionary, seed=0, **overrides):
    torch.manual_seed(seed)
    return OFAModel.from_config(config_for_arch("ofa_test", **overrides), dictionary)




def loss_of(model, b, seed=0):
    logits = model(**b)[0]
    target = torch.roll(b["prev_output_tokens"], -1, dims=1)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1))


def adapters_nonzero_(model, seed=1):
    """Give every adapter a nonzero ``B`` (fresh ones are zero and change nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_key(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def d(small_dict):
    return small_dict


# ---------------------------------------------------------------------------- LoRA
def test_lora_wraps_exactly_the_targets_and_only_adapters_train(d):
    model = build(d, lora_rank=4, lora_targets="q,v,fc2")
    wrapped = sorted(n for n, m in model.named_modules() if hasattr(m, "base_layer"))
    assert wrapped == ["decoder.layers.0.encoder_attn.q_proj", "decoder.layers.0.encoder_attn.v_proj",
                       "decoder.layers.0.fc2", "decoder.layers.0.self_attn.q_proj", "decoder.layers.0.self_attn.v_proj",
                       "encoder.layers.0.fc2", "encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.v_proj"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * len(wrapped) and all(is_adapter_key(n) for n in trainable)
    assert model.encoder.layers[0].fc2.lora_A["default"].weight.shape == (4, 64)
    assert model.encoder.layers[0].fc2.scaling["default"] == 1.0  # alpha 0 -> alpha = rank
    assert build(d, lora_rank=4, lora_alpha=16).encoder.layers[0].fc1.scaling["default"] == 4.0
    full = build(d, lora_rank=2)  # the default targets: every attention projection and both FFN maps
    assert sum(hasattr(m, "base_layer") for m in full.modules()) == 6 + 10
    assert "pos_q_linear" not in lora_target_regex("q,k,v,out,fc1,fc2")


def test_a_fresh_adapter_changes_nothing_and_training_moves_only_the_adapters(d, monkeypatch):
    # bit for bit: the plain kernels on both sides (LoRA base layers never take the packed oneDNN path)
    monkeypatch.setenv("OFA_ONEDNN", "0")
    plain = randomize_(build(d)).eval()
    lora = build(d, lora_rank=4, lora_alpha=8)
    lora.load_state_dict(plain.state_dict())  # a plain state dict fits (upgrade_state_dict_named)
    lora.eval()
    b = toy_batch(d)
    with torch.no_grad():
        torch.testing.assert_close(lora(**b)[0], plain(**b)[0], rtol=0, atol=0)
    before = {k: v.clone() for k, v in lora.state_dict().items()}
    params = [p for p in lora.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    lora.train()
    for _ in range(3):
        opt.zero_grad()
        loss_of(lora, b).backward()
        opt.step()
    after = lora.state_dict()
    weights = {n for n, _ in lora.named_parameters()}
    changed = {k for k in weights if not torch.equal(after[k], before[k])}
    assert changed == {n for n in weights if is_adapter_key(n)}  # every adapter moved; base weights bit-identical


def test_merge_lora_state_is_w_plus_scaled_b_a_and_pure():
    g = torch.Generator().manual_seed(0)
    w, bias = torch.randn(6, 5, generator=g), torch.randn(6, generator=g)
    a, b_ = torch.randn(3, 5, generator=g), torch.randn(6, 3, generator=g)
    state = {"m.base_layer.weight": w, "m.base_layer.bias": bias, "m.lora_A.default.weight": a,
             "m.lora_B.default.weight": b_, "other.weight": torch.ones(2)}
    keys = list(state)
    merged = merge_lora_state(state, 0.5)
    assert list(state) == keys  # pure
    assert set(merged) == {"m.weight", "m.bias", "other.weight"}
    torch.testing.assert_close(merged["m.weight"], w + 0.5 * b_ @ a)
    assert merged["m.bias"] is bias and lora_scale(4, 8) == 2.0 and lora_scale(4, 0) == 1.0
    with pytest.raises(ValueError, match="m: incomplete LoRA weights"):
        merge_lora_state({k: v for k, v in state.items() if "lora_B" not in k}, 1.0)
    with pytest.raises(ValueError, match="do not fit the weight"):
        merge_lora_state({**state, "m.lora_B.default.weight": torch.randn(5, 3)}, 1.0)


def test_adapt_plain_state_maps_base_weights_and_keeps_fresh_adapters():
    own = {"m.base_layer.weight": torch.zeros(2, 2), "m.lora_A.default.weight": torch.full((1, 2), 7.0),
           "m.lora_B.default.weight": torch.zeros(2, 1), "n.weight": torch.zeros(1)}
    plain = {"p.m.weight": torch.ones(2, 2), "p.n.weight": torch.ones(1)}
    out = adapt_plain_state(plain, own, prefix="p.")
    assert set(out) == {"p.m.base_layer.weight", "p.m.lora_A.default.weight", "p.m.lora_B.default.weight",
                        "p.n.weight"}
    assert torch.equal(out["p.m.lora_A.default.weight"], own["m.lora_A.default.weight"]) and "p.m.weight" in plain
    assert adapt_plain_state({"m.lora_A.default.weight": 1}, own) == {"m.lora_A.default.weight": 1}  # already LoRA


def test_merged_model_gives_the_unmerged_outputs(d):
    lora = adapters_nonzero_(randomize_(build(d, lora_rank=4, lora_alpha=6, lora_targets="q,k,v,out,fc1,fc2"))).eval()
    state = merge_lora_state(lora.state_dict(), lora_scale(4, 6))
    assert not any(is_adapter_key(k) or "base_layer" in k for k in state)
    plain = build(d)
    plain.load_state_dict(state)
    plain.eval()
    b = toy_batch(d)
    with torch.no_grad():
        torch.testing.assert_close(plain(**b)[0], lora(**b)[0], rtol=0, atol=1e-5)
        assert not torch.allclose(lora(**b)[0], randomize_(build(d)).eval()(**b)[0], atol=1e-3)  # adapters matter


def test_checkpoint_keeps_adapters_and_load_model_and_export_merge_them(d, spm_dir, tmp_path):
    tok = load_tokenizer(spm_dir)
    torch.manual_seed(0)
    lora = OFAModel.from_config(config_for_arch("ofa_test", lora_rank=4, lora_alpha=8, lora_targets="q,v,fc1"),
                                tok.dictionary)
    adapters_nonzero_(randomize_(lora)).eval()
    path = tmp_path / "lora.pt"
    save_checkpoint(lora, str(path), task_cfg={"_name": "caption", "bpe_dir": spm_dir})
    saved = safe_load(str(path))
    assert "encoder.layers.0.self_attn.q_proj.lora_A.default.weight" in saved["model"]
    assert "encoder.layers.0.self_attn.q_proj.base_layer.weight" in saved["model"]
    assert (saved["cfg"]["model"].lora_rank, saved["cfg"]["model"].lora_alpha) == (4, 8.0)
    assert saved["cfg"]["model"].lora_targets == "q,v,fc1"

    b = toy_batch(tok.dictionary)
    with torch.no_grad():
        expected = lora(**b)[0]
    model, _, info = load_model(str(path))
    assert info.model.lora_rank == 0 and model.cfg.lora_rank == 0
    assert not any(hasattr(m, "base_layer") for m in model.modules())  # a plain OFAModel
    export = export_safetensors(lora, spm_dir, str(tmp_path / "export"))
    exported, _, exported_info = load_model(export)
    assert exported_info.model.lora_rank == 0
    with torch.no_grad():
        torch.testing.assert_close(model(**b)[0], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(exported(**b)[0], expected, rtol=0, atol=1e-5)

    # lora_rank as an override: the checkpoint's adapters merged at its own scale, fresh ones of the new rank on top
    fresh, _, fresh_info = load_model(str(path), overrides={"lora_rank": 2, "lora_alpha": 64.0})
    assert fresh_info.model.lora_rank == 2 and fresh.encoder.layers[0].fc1.lora_A["default"].weight.shape[0] == 2
    with torch.no_grad():
        torch.testing.assert_close(fresh(**b)[0], expected, rtol=0, atol=1e-5)
    # a plain checkpoint with lora_rank as an override: fresh adapters over its weights
    plain_path = tmp_path / "plain.pt"
    save_checkpoint(model, str(plain_path), task_cfg={"_name": "caption", "bpe_dir": spm_dir})
    again, _, again_info = load_model(str(plain_path), overrides={"lora_rank": 2})
    assert again_info.model.lora_rank == 2 and hasattr(again.encoder.layers[0].fc1, "base_layer")
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):  # bit for bit: the same (plain) kernels
        torch.testing.assert_close(again(**b)[0], model(**b)[0], rtol=0, atol=0)


# ---------------------------------------------------------------------------- BitFit and --freeze
def test_bitfit_trains_only_bias_terms(d):
    model = build(d, bitfit=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".bias") for n in trainable)
    assert "encoder.layers.0.fc1.bias" in trainable and "encoder.embed_images.bn1.bias" in trainable
    with_lora = build(d, bitfit=True, lora_rank=2, lora_targets="fc1")
    names = {n for n, p in with_lora.named_parameters() if p.requires_grad}
    assert "encoder.layers.0.fc1.lora_A.default.weight" in names and "encoder.layers.0.fc1.base_layer.bias" in names
    assert all(n.endswith(".bias") or is_adapter_key(n) for n in names)


def test_freeze_patterns_freeze_what_they_match_and_win(d):
    model = build(d, freeze="encoder.embed_images.*,*embed_tokens*")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "encoder.embed_tokens.weight" in frozen and "encoder.embed_images.conv1.weight" in frozen
    assert all(n.startswith("encoder.embed_images.") or "embed_tokens" in n for n in frozen)
    trained, total = trainable_counts(model)
    assert 0 < trained < total
    # a regex; with LoRA the plain name (without .base_layer) matches too; freeze wins over bitfit
    lora = build(d, lora_rank=2, bitfit=True, freeze=r"re:decoder\.layers\.\d+\.fc1\..*,*lora_B*")
    names = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert "decoder.layers.0.fc1.base_layer.bias" not in names and "decoder.layers.0.fc2.base_layer.bias" in names
    assert not any(".lora_B." in n or "decoder.layers.0.fc1." in n for n in names)


@pytest.mark.parametrize("overrides, message", [
    (dict(freeze="encoder.embed_imagez.*"), "--freeze pattern 'encoder.embed_imagez.*' matches no parameter"),
    (dict(freeze="re:(unclosed"), "model config 'freeze' pattern 're:(unclosed' is not a regular expression"),
    (dict(lora_rank=2, lora_targets="q,query"), "model config 'lora_targets' = 'q,query': unknown target 'query'"),
    (dict(lora_rank=-1), "model config 'lora_rank' = -1 is out of range [0, 4096]"),
])
def test_finetuning_mistakes_are_one_line_errors(d, overrides, message):
    with pytest.raises(ConfigError) as err:
        build(d, **overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------- activation checkpointing
@pytest.mark.parametrize("extra", [{}, {"lora_rank": 2}])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(d, extra, monkeypatch):
    rates = dict(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, encoder_drop_path_rate=0.1,
                 decoder_drop_path_rate=0.1, attention_impl="math", **extra)
    import ofa.model.decoder as decoder_module
    import ofa.model.encoder as encoder_module

    calls = []
    for module in (encoder_module, decoder_module):
        def counted(*a, _inner=module.checkpoint, **k):
            calls.append(1)
            return _inner(*a, **k)
        monkeypatch.setattr(module, "checkpoint", counted)
    results = []
    for flag in (False, True):
        calls.clear()
        model = build(d, checkpoint_activations=flag, **rates)
        randomize_(model)
        if extra:
            adapters_nonzero_(model)
        model.train()
        torch.manual_seed(5)
        loss = loss_of(model, toy_batch(d))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        assert len(calls) == (2 if flag else 0)  # one encoder and one decoder layer, each once
    (loss0, grads0), (loss1, grads1) = results
    assert torch.equal(loss0, loss1) and grads0.keys() == grads1.keys() and grads0
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], rtol=1e-5, atol=1e-7, msg=name)

    def refuse(*a, **k):
        raise AssertionError("checkpoint used outside training")

    monkeypatch.setattr(encoder_module, "checkpoint", refuse)
    monkeypatch.setattr(decoder_module, "checkpoint", refuse)
    model.eval()
    with torch.no_grad():
        model(**toy_batch(d))  # evaluation and decoding never recompute


# ---------------------------------------------------------------------------- ofa-train
def test_command_line_flags_reach_the_model_config():
    import ofa.tasks  # noqa: F401  (registers the tasks)
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=[
        "data.tsv", "--task", "caption", "--arch", "ofa_test", "--lora-rank", "8", "--lora-alpha", "16",
        "--lora-targets", "q,v", "--freeze", "encoder.embed_images.*", "--bitfit", "--checkpoint-activations"])
    model = convert_namespace_to_omegaconf(args).model
    assert (model.lora_rank, model.lora_alpha, model.lora_targets) == (8, 16.0, "q,v")
    assert model.freeze == "encoder.embed_images.*" and model.bitfit and model.checkpoint_activations
    flags = [s for a in parser._actions for s in a.option_strings if s == "--checkpoint-activations"]
    assert flags == ["--checkpoint-activations"]  # fairseq defines no flag of that name for this model


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A 12-image embedded benchmark at 64 px and a SentencePiece tokenizer trained on its text."""
    from ofa.tokenizer import train_sentencepiece
    from ofa_synth.writer import main as synth_main

    out = tmp_path_factory.mktemp("synth")
    synth_main([str(out), "--num-images", "12", "--image-size", "64", "--seed", "0"])
    train_sentencepiece(str(out / "text_corpus.txt"), str(out / "tok"), vocab_size=400)
    return out


def _train_args(data, save, extra=()):
    return [f"{data}/image_classify_train.tsv,{data}/image_classify_valid.tsv", "--task", "image_classify",
            "--ans2label-file", f"{data}/class_names.txt", "--bpe-dir", f"{data}/tok", "--arch", "ofa_test", "--cpu",
            "--patch-image-size", "64", "--batch-size", "4", "--max-update", "2", "--optimizer", "adam", "--lr", "1e-2",
            "--criterion", "adjust_label_smoothed_cross_entropy", "--save-dir", str(save), "--no-epoch-checkpoints",
            "--log-format", "simple", "--num-workers", "0", "--disable-validation", "--seed", "1", *extra]


def test_ofa_train_with_lora_restores_a_plain_checkpoint_and_saves_adapters(synth, tmp_path):
    from ofa.cli.train import train as train_main

    train_main(_train_args(synth, tmp_path / "plain", ["--max-update", "1"]))
    plain = safe_load(str(tmp_path / "plain" / "checkpoint_last.pt"))["model"]
    train_main(_train_args(synth, tmp_path / "lora", [
        "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "q,v,fc1", "--checkpoint-activations",
        "--restore-file", str(tmp_path / "plain" / "checkpoint_last.pt"), "--reset-optimizer", "--reset-dataloader",
        "--reset-meters", "--reset-lr-scheduler"]))
    ckpt = safe_load(str(tmp_path / "lora" / "checkpoint_last.pt"))
    state, cfg = ckpt["model"], ckpt["cfg"]["model"]
    assert (cfg["lora_rank"], cfg["lora_alpha"], cfg["lora_targets"]) == (4, 8.0, "q,v,fc1")
    adapters = [k for k in state if is_adapter_key(k)]
    assert len(adapters) == 2 * (3 + 2 * 2 + 1)  # encoder q, v, fc1; decoder self/cross q, v and fc1
    assert any(not torch.equal(state[k], torch.zeros_like(state[k])) for k in adapters if ".lora_B." in k)  # trained
    # the restored base weights did not move; everything else is the plain checkpoint's
    for key, value in plain.items():
        own = key.replace(".q_proj.", ".q_proj.base_layer.").replace(".v_proj.", ".v_proj.base_layer.").replace(
            ".fc1.", ".fc1.base_layer.") if ".layers." in key else key
        if value.is_floating_point() and "running_" not in key:
            assert torch.equal(state[own], value), key
    # the optimizer state covers the trainable parameters only: the adapters
    optimizer_state = ckpt["last_optimizer_state"]["state"]
    assert len(optimizer_state) == len(adapters)
    assert sorted(v["exp_avg"].numel() for v in optimizer_state.values()) == sorted(
        state[k].numel() for k in adapters)
    model, _, info = load_model(str(tmp_path / "lora" / "checkpoint_last.pt"))
    assert info.model.lora_rank == 0 and not any(hasattr(m, "base_layer") for m in model.modules())
