"""Checkpoint I/O: safe unpickling, strict loading, format round trips, EMA, atomic writes."""
from __future__ import annotations

import argparse
import os

import pytest
import torch

from conftest import randomize_
from ofa.checkpoint import (CheckpointError, export_safetensors, from_mmpretrain, infer_config, load_model,
                            load_state_strict, official_to_mmpretrain, safe_load, save_checkpoint)
from ofa.model import OFAModel, config_for_arch
from ofa.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tiny(spm_dir):
    tok = load_tokenizer(spm_dir)
    torch.manual_seed(0)
    model = randomize_(OFAModel.from_config(config_for_arch("ofa_test"), tok.dictionary)).eval()
    return model, tok


def _outputs(model):
    g = torch.Generator().manual_seed(3)
    src = torch.randint(4, 40, (2, 6), generator=g)
    prev = torch.randint(4, 40, (2, 4), generator=g)
    img = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        return model(src, None, prev, patch_images=img, patch_masks=torch.tensor([True, False]))[0]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra_state": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pt.*Nothing from it was executed"):
        load_model(str(path))
    assert not marker.exists()


def test_namespace_configs_load_under_the_allowlist(tmp_path):
    path = tmp_path / "ns.pt"
    torch.save({"cfg": {"model": argparse.Namespace(arch="ofa_tiny")}, "model": {}}, path)
    assert safe_load(str(path))["cfg"]["model"].arch == "ofa_tiny"


def test_fairseq_format_round_trip_gives_the_same_outputs(tiny, tmp_path, spm_dir):
    model, tok = tiny
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, str(path), task_cfg={"bpe_dir": spm_dir})
    loaded, d, info = load_model(str(path))
    assert info.format == "fairseq" and len(d) == len(tok.dictionary)
    assert not loaded.training
    torch.testing.assert_close(_outputs(loaded), _outputs(model), atol=0, rtol=0)


def test_safetensors_export_round_trip_gives_the_same_outputs(tiny, tmp_path, spm_dir):
    model, _ = tiny
    out = export_safetensors(model, spm_dir, str(tmp_path / "export"))
    assert sorted(os.listdir(out)) == ["config.json", "dict.txt", "model.safetensors", "spm.model"]
    loaded, _, info = load_model(out)  # the export carries its own tokenizer
    assert info.format == "safetensors"
    torch.testing.assert_close(_outputs(loaded), _outputs(model), atol=0, rtol=0)


def test_fp16_weights_are_upcast_on_load(tiny, tmp_path, spm_dir):
    model, _ = tiny
    half = OFAModel.from_config(model.cfg, model.encoder.dictionary)
    half.load_state_dict(model.state_dict())
    half.half()
    path = tmp_path / "fp16.pt"
    save_checkpoint(half, str(path), task_cfg={"bpe_dir": spm_dir})
    assert safe_load(str(path))["model"]["encoder.image_proj.weight"].dtype == torch.float16
    loaded, _, _ = load_model(str(path))
    assert loaded.encoder.image_proj.weight.dtype == torch.float32
    torch.testing.assert_close(_outputs(loaded), _outputs(model), atol=5e-2, rtol=5e-2)


def test_ema_weights_are_used_only_when_asked(tiny, tmp_path, spm_dir):
    model, _ = tiny
    ema = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = tmp_path / "ema.pt"
    save_checkpoint(model, str(path), task_cfg={"bpe_dir": spm_dir}, extra_state={"ema": ema})
    raw, _, info_raw = load_model(str(path))
    with_ema, _, info_ema = load_model(str(path), ema=True)
    assert not info_raw.ema and info_ema.ema
    assert torch.equal(raw.encoder.image_proj.weight, model.encoder.image_proj.weight)
    assert torch.equal(with_ema.encoder.image_proj.weight, model.encoder.image_proj.weight + 1.0)
    plain = tmp_path / "plain.pt"
    save_checkpoint(model, str(plain), task_cfg={"bpe_dir": spm_dir})
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_model(str(plain), ema=True)


def test_strict_loading_names_missing_unexpected_and_misshaped_keys(tiny):
    model, _ = tiny
    state = dict(model.state_dict())
    del state["encoder.layers.0.fc1.bias"]
    state["encoder.bogus.weight"] = torch.zeros(3)
    state["decoder.layers.0.fc2.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError) as err:
        load_state_strict(model, state, source="bad.pt")
    msg = str(err.value)
    assert "missing 1 ['encoder.layers.0.fc1.bias']" in msg
    assert "unexpected 1 ['encoder.bogus.weight']" in msg
    assert "decoder.layers.0.fc2.weight: checkpoint (5, 5) vs model (32, 64)" in msg


def test_derived_buffers_are_rebuilt_not_trusted(tiny, tmp_path, spm_dir):
    model, _ = tiny
    state = dict(model.state_dict())
    state["encoder.token_rp_bucket"] = torch.zeros_like(state["encoder.token_rp_bucket"])
    del state["decoder.image_position_idx"]
    fresh = OFAModel.from_config(model.cfg, model.encoder.dictionary)
    load_state_strict(fresh, state)
    assert torch.equal(fresh.encoder.token_rp_bucket, model.encoder.token_rp_bucket)


def test_vocabulary_mismatch_is_a_clear_error(tiny, tmp_path, bpe_dir, spm_dir):
    model, _ = tiny
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, str(path), task_cfg={"bpe_dir": spm_dir})
    with pytest.raises(CheckpointError, match="embedding rows but the dictionary has 59457 entries"):
        load_model(str(path), bpe_dir=bpe_dir)


def test_mmpretrain_state_dict_loads_and_its_architecture_is_inferred(tiny, tmp_path, spm_dir):
    model, _ = tiny
    mm = {official_to_mmpretrain(k): v for k, v in model.state_dict().items() if official_to_mmpretrain(k)}
    back = from_mmpretrain(mm)
    cfg = infer_config(back)
    for field in ("encoder_embed_dim", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                  "encoder_ffn_embed_dim", "resnet_type", "scale_attn", "scale_fc", "scale_heads",
                  "add_type_embedding", "code_image_size", "token_bucket_size", "image_bucket_size"):
        assert getattr(cfg, field) == getattr(model.cfg, field), field
    path = tmp_path / "mm.pth"
    torch.save(mm, path)
    loaded, _, info = load_model(str(path), bpe_dir=spm_dir)
    assert info.format == "mmpretrain"
    torch.testing.assert_close(_outputs(loaded), _outputs(model), atol=0, rtol=0)


def test_unknown_mmpretrain_keys_are_named_in_the_error(tiny, tmp_path, spm_dir):
    model, _ = tiny
    mm = {official_to_mmpretrain(k): v for k, v in model.state_dict().items() if official_to_mmpretrain(k)}
    mm["model.encoder.something_new.weight"] = torch.zeros(1)
    path = tmp_path / "mm_extra.pth"
    torch.save(mm, path)
    with pytest.raises(CheckpointError, match=r"unexpected 1 \['encoder.something_new.weight'\]"):
        load_model(str(path), bpe_dir=spm_dir)


def test_failed_save_leaves_the_previous_checkpoint_intact(tiny, tmp_path, spm_dir, monkeypatch):
    model, _ = tiny
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, str(path), task_cfg={"bpe_dir": spm_dir})
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, str(path), task_cfg={"bpe_dir": spm_dir})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_build_model_for_arch_uses_the_released_flags(bpe_dir):
    from ofa.checkpoint import build_model_for_arch

    model, d = build_model_for_arch("ofa_test", bpe_dir=bpe_dir)
    assert len(d) == 59457
    assert model.cfg.scale_attn and model.cfg.scale_heads and model.cfg.disable_entangle
    assert model.encoder.layers[0].attn_ln is not None
