"""Checkpoints and configs are input too: every value a checkpoint, an export's JSON or a caller gives is
checked against its type and range before anything is allocated, unknown keys are reported, and options
that contradict the checkpoint are errors naming both values (issue 17)."""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import os
import shutil

import pytest
import torch

from conftest import REFERENCE
from ofa.checkpoint import CheckpointError, export_safetensors, load_model, safe_load, save_checkpoint
from ofa.config_checks import (TASK_LIMITS, Limit, check_against_checkpoint, ignorable_keys, problem,
                               reject_unknown_keys, task_field_limits)
from ofa.errors import ConfigError, UserError
from ofa.model import OFAModel, config_for_arch
from ofa.model.config import ARCHS, MODEL_LIMITS, OFAModelConfig, backbone_stride, check_model_config
from ofa.task_config import build_task_config
from ofa.tokenizer import BpeDirError, load_tokenizer


# ---------------------------------------------------------------------------- pure checks
@pytest.mark.parametrize("value, limit, expected", [
    (12, Limit(int, 1, 256), None),
    (0, Limit(int, 1, 256), "is out of range [1, 256]"),
    (10 ** 9, Limit(int, 1, 256), "is out of range [1, 256]"),
    (True, Limit(int, 1, 256), "is not an integer"),
    ("12", Limit(int, 1, 256), "is not an integer"),
    (12.0, Limit(int, 1, 256), "is not an integer"),
    (2, Limit(float, 1e-3, 1e3), None),  # the official Namespace stores attn_scale_factor 2 as an int
    (float("nan"), Limit(float, 0, 1), "is not a finite number"),
    (1.5, Limit(float, 0, 1), "is out of range [0, 1]"),
    (0.5, Limit(float, 1e-3, 1), None),
    (1, Limit(bool), "is not true or false"),
    ("tanh", Limit(str, choices=("gelu", "relu")), "is not one of gelu, relu"),
    (None, Limit(str, optional=True), None),
    (None, Limit(int, 1, 2), "is missing (None)"),
])
def test_problem_names_what_is_wrong(value, limit, expected):
    assert problem(value, limit) == expected


def test_every_model_field_has_a_limit_and_every_preset_passes():
    fields = {f.name for f in dataclasses.fields(OFAModelConfig) if not f.name.startswith("_")}
    assert fields == set(MODEL_LIMITS)
    for arch in ARCHS:
        check_model_config(dataclasses.asdict(config_for_arch(arch)))


@pytest.mark.parametrize("values, message", [
    ({"encoder_layers": 10 ** 9}, "model config 'encoder_layers' = 1000000000 in ck.pt is out of range [1, 256]"),
    ({"decoder_layers": -1}, "model config 'decoder_layers' = -1 in ck.pt is out of range [1, 256]"),
    ({"encoder_ffn_embed_dim": 10 ** 9}, "'encoder_ffn_embed_dim' = 1000000000 in ck.pt is out of range [1, 65536]"),
    ({"max_source_positions": 10 ** 9}, "'max_source_positions' = 1000000000 in ck.pt is out of range [1, 1024]"),
    ({"image_bucket_size": 1000}, "'image_bucket_size' = 1000 in ck.pt is out of range [1, 64]"),
    ({"token_bucket_size": 1}, "'token_bucket_size' = 1 in ck.pt is out of range [2, 1024]"),
    ({"encoder_layers": "12"}, "model config 'encoder_layers' = '12' in ck.pt is not an integer"),
    ({"scale_attn": "yes"}, "model config 'scale_attn' = 'yes' in ck.pt is not true or false"),
    ({"dropout": 1.5}, "model config 'dropout' = 1.5 in ck.pt is out of range [0, 1]"),
    ({"attention_impl": "flash"}, "model config 'attention_impl' = 'flash' in ck.pt is not one of sdpa, math"),
    ({"resnet_type": "resnet7"}, "unknown resnet_type 'resnet7' in ck.pt; choose one of"),
    ({"encoder_embed_dim": 100, "decoder_embed_dim": 100, "encoder_attention_heads": 3},
     "model config in ck.pt: encoder_embed_dim 100 is not divisible by encoder_attention_heads 3"),
    ({"encoder_embed_dim": 64, "decoder_embed_dim": 32},
     "model config in ck.pt: encoder_embed_dim 64 must equal decoder_embed_dim 32"),
    ({"code_image_size": 100}, "model config in ck.pt: code_image_size 100 must be a multiple of 8"),
    ({"code_image_size": 512, "image_bucket_size": 42}, "fits image_bucket_size 42 (at most 336)"),
])
def test_bad_model_values_are_one_line_errors(values, message):
    with pytest.raises(ConfigError) as err:
        check_model_config(values, where="ck.pt")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_config_checks_itself_when_built_from_any_source():
    with pytest.raises(ConfigError, match=r"model config 'encoder_layers' = 0 is out of range \[1, 256\]"):
        config_for_arch("ofa_test", encoder_layers=0)
    with pytest.raises(ConfigError, match="'decoder_attention_heads' = -2 is out of range"):
        OFAModelConfig.from_any(argparse.Namespace(decoder_attention_heads=-2))


@pytest.mark.parametrize("resnet_type, stride", [
    ("resnet50", 16), ("resnet152", 16), ("timm:resnet18", 16), ("timm:resnet10t@8", 8), ("timm:convnext@32", 32),
])
def test_backbone_stride(resnet_type, stride):
    assert backbone_stride(resnet_type) == stride


def test_task_limits_follow_the_table_then_the_annotation():
    from ofa.tasks.refcoco import RefcocoConfig

    limits = task_field_limits(RefcocoConfig)
    assert limits["num_bins"] == TASK_LIMITS["num_bins"]
    assert limits["bpe_dir"] == Limit(str, optional=True)  # Optional[str]: type only
    assert limits["bad_rows"].choices == ("fail", "skip")  # a ChoiceEnum


def test_unknown_user_keys_are_an_error_with_the_near_name():
    with pytest.raises(ConfigError, match=r"unknown model config key in overrides: 'atention_impl' "
                                          r"\(did you mean 'attention_impl'\?\)"):
        reject_unknown_keys({"atention_impl": "math"}, MODEL_LIMITS, scope="model config", given_as="overrides")


def test_official_and_fairseq_keys_are_ignorable():
    keys = ignorable_keys()
    for key in ("adapter", "encoder_prompt", "distributed_world_size", "arch", "sample_patch_num", "eval_args",
                "orig_patch_image_size", "lr", "label_smoothing", "warmup_updates"):
        assert key in keys, key


# ---------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def tiny(spm_dir):
    tok = load_tokenizer(spm_dir)
    torch.manual_seed(0)
    return OFAModel.from_config(config_for_arch("ofa_test"), tok.dictionary).eval()


@pytest.fixture(scope="module")
def ckpt(tiny, spm_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "refcoco.pt"
    save_checkpoint(tiny, str(path), task_cfg={"_name": "refcoco", "bpe_dir": spm_dir, "patch_image_size": 64,
                                               "max_image_size": 64})
    return str(path)


def rewrite(src: str, dst, model=None, task=None, drop=()) -> str:
    """A copy of checkpoint ``src`` with model / task config entries changed (or dropped)."""
    obj = safe_load(src)
    ns = vars(obj["cfg"]["model"])
    ns.update(model or {})
    for key in drop:
        ns.pop(key, None)
    obj["cfg"]["task"].update(task or {})
    torch.save(obj, dst)
    return str(dst)


@pytest.fixture
def nothing_allocated(monkeypatch):
    """Building the tokenizer or the model fails the test: the checks must come first."""
    def refuse(*a, **k):
        raise AssertionError("allocated before the config was checked")

    monkeypatch.setattr("ofa.checkpoint.OFAModel.from_config", refuse)
    monkeypatch.setattr("ofa.checkpoint.load_tokenizer", refuse)


@pytest.mark.parametrize("model, task, message", [
    ({"encoder_layers": 10 ** 9}, {}, "model config 'encoder_layers' = 1000000000 in {} is out of range [1, 256]"),
    ({"decoder_ffn_embed_dim": 10 ** 9}, {}, "'decoder_ffn_embed_dim' = 1000000000 in {} is out of range [1, 65536]"),
    ({"max_target_positions": 10 ** 9}, {}, "'max_target_positions' = 1000000000 in {} is out of range [1, 1024]"),
    ({"encoder_layers": -3}, {}, "model config 'encoder_layers' = -3 in {} is out of range [1, 256]"),
    ({"encoder_attention_heads": 5}, {}, "model config in {}: encoder_embed_dim 32 is not divisible by "
                                         "encoder_attention_heads 5"),
    ({"activation_fn": "swish"}, {}, "model config 'activation_fn' = 'swish' in {} is not one of gelu, relu"),
    ({}, {"num_bins": 10 ** 9}, "task config 'num_bins' = 1000000000 in {} is out of range [1, 100000]"),
    ({}, {"code_dict_size": -1}, "task config 'code_dict_size' = -1 in {} is out of range [1, 100000]"),
    ({}, {"patch_image_size": "64"}, "task config 'patch_image_size' = '64' in {} is not an integer"),
])
def test_bad_checkpoint_values_are_refused_before_allocation(ckpt, tmp_path, nothing_allocated, model, task, message):
    path = rewrite(ckpt, tmp_path / "bad.pt", model, task)
    with pytest.raises(ConfigError) as err:
        load_model(path)
    assert str(err.value) == message.format(path) or message.format(path) in str(err.value)


def test_bad_export_json_values_are_refused_before_allocation(tiny, spm_dir, tmp_path, monkeypatch):
    out = export_safetensors(tiny, spm_dir, str(tmp_path / "export"), task_cfg={"num_bins": 1000})
    cfg_path = os.path.join(out, "config.json")
    config = json.load(open(cfg_path))
    config["model"]["encoder_layers"] = 10 ** 9
    json.dump(config, open(cfg_path, "w"))
    monkeypatch.setattr("ofa.checkpoint.OFAModel.from_config", lambda *a, **k: pytest.fail("allocated"))
    with pytest.raises(ConfigError, match=rf"model config 'encoder_layers' = 1000000000 in {cfg_path} "
                                          r"is out of range \[1, 256\]"):
        load_model(out)
    config["model"]["encoder_layers"] = 1
    config["task"]["num_bins"] = 10 ** 9
    json.dump(config, open(cfg_path, "w"))
    with pytest.raises(ConfigError, match=rf"task config 'num_bins' = 1000000000 in {cfg_path} is out of range"):
        load_model(out)
    with open(cfg_path, "w") as f:
        f.write('{"format": "ofa-safetensors",\n "model": {,}}')
    with pytest.raises(CheckpointError, match=rf"{cfg_path}:2: not valid JSON"):
        load_model(out)


def test_tensor_shapes_of_a_configless_checkpoint_are_checked_too(tiny, tmp_path, nothing_allocated):
    state = dict(tiny.state_dict())
    state["encoder.layers.999999999.fc1.bias"] = torch.zeros(1)
    path = tmp_path / "bare.pt"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"model config 'encoder_layers' = 1000000000 in .*bare.pt \(read off its "
                                          r"tensors\) is out of range \[1, 256\]"):
        load_model(str(path))


def warned(caplog):
    """The warning lines of ``ofa.config_checks`` so far."""
    return sorted(r.getMessage() for r in caplog.records
                  if r.name == "ofa.config_checks" and r.levelno >= logging.WARNING)


def test_unknown_checkpoint_keys_are_warned_in_one_line_and_official_ones_are_quiet(ckpt, tmp_path, caplog):
    noisy = rewrite(ckpt, tmp_path / "noisy.pt", {"encoder_layerz": 3, "my_flag": True, "adapter": False,
                                                  "distributed_world_size": 8})
    load_model(noisy)
    assert warned(caplog) == [f"{noisy}: model config keys this version does not know, ignored: "
                              "encoder_layerz, my_flag"]
    caplog.clear()
    load_model(ckpt)  # arch (saved by save_checkpoint) and the official keys are known
    assert warned(caplog) == []


def test_unknown_export_keys_are_warned(tiny, spm_dir, tmp_path, caplog):
    out = export_safetensors(tiny, spm_dir, str(tmp_path / "export"))
    cfg_path = os.path.join(out, "config.json")
    config = json.load(open(cfg_path))
    config["model"]["rope_theta"] = 10000
    config["created_by"] = "someone"
    json.dump(config, open(cfg_path, "w"))
    load_model(out)
    assert warned(caplog) == [f"{cfg_path}: model config keys this version does not know, ignored: rope_theta",
                        f"{cfg_path}: top-level keys this version does not know, ignored: created_by"]


@pytest.mark.parametrize("overrides, message", [
    ({"atention_impl": "math"}, "unknown model config key in overrides: 'atention_impl' (did you mean"),
    ({"attention_impl": "flash"}, "attention_impl='flash' is not one of sdpa, math"),
    ({"dropout": -0.1}, "dropout=-0.1 is out of range [0, 1]"),
])
def test_bad_overrides_are_errors(ckpt, nothing_allocated, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_model(ckpt, overrides=overrides)
    assert message in str(err.value)


def _bpe_cases(tmp_path, spm_dir):
    (tmp_path / "a_file").write_text("x")
    gpt2 = tmp_path / "gpt2_partial"
    gpt2.mkdir()
    (gpt2 / "encoder.json").write_text("{}")
    spm = tmp_path / "spm_partial"
    spm.mkdir()
    shutil.copy(os.path.join(spm_dir, "spm.model"), spm / "spm.model")
    (tmp_path / "empty").mkdir()
    return [
        (tmp_path / "missing", "bpe_dir {} does not exist"),
        (tmp_path / "a_file", "bpe_dir {} is not a folder"),
        (gpt2, "bpe_dir {} lacks vocab.bpe and dict.txt (GPT-2 BPE needs encoder.json, vocab.bpe, dict.txt)"),
        (spm, "bpe_dir {} lacks dict.txt (a SentencePiece tokenizer needs spm.model, dict.txt)"),
        (tmp_path / "empty", "bpe_dir {} holds neither GPT-2 BPE files (encoder.json, vocab.bpe, dict.txt) nor a "
                             "SentencePiece model (spm.model, dict.txt): it lacks encoder.json and spm.model"),
    ]


def test_a_bad_bpe_dir_is_an_error_naming_the_folder_and_the_missing_file(ckpt, tmp_path, spm_dir):
    for folder, message in _bpe_cases(tmp_path, spm_dir):
        with pytest.raises(BpeDirError) as err:
            load_model(ckpt, bpe_dir=str(folder))  # an explicit folder is never skipped silently
        assert str(err.value).startswith(message.format(folder)), str(err.value)
        assert isinstance(err.value, (ConfigError, FileNotFoundError))


# ---------------------------------------------------------------------------- options vs the checkpoint
@pytest.fixture(scope="module")
def info(ckpt):
    return load_model(ckpt)[2]


@pytest.mark.parametrize("cli, message", [
    ({"num_bins": 500}, "--num-bins 500 contradicts the checkpoint's num_bins 1000"),
    ({"code_dict_size": 4096}, "--code-dict-size 4096 contradicts the checkpoint's code_dict_size 8192"),
    ({"patch_image_size": 100}, "--patch-image-size 100 is not a multiple of the image backbone's stride 16 "
                                "(the checkpoint's resnet_type 'resnet50'): use 96 or 112"),
    ({"patch_image_size": 1008}, "--patch-image-size 1008 contradicts the checkpoint's image positions: 63x63 "
                                 "patches but image_bucket_size 42 covers 42x42 (patch_image_size at most 672)"),
    ({"max_src_length": 5000}, "--max-src-length 5000 contradicts the checkpoint's max_source_positions 1024"),
    ({"max_tgt_length": 2000}, "--max-tgt-length 2000 contradicts the checkpoint's max_target_positions 1024"),
    ({"num_bins": 10 ** 9}, "--num-bins 1000000000 is out of range [1, 100000]"),
    ({"eval_beam": 0}, "--eval-beam 0 is out of range [1, 1024]"),
    ({"patch_image_size": -16}, "--patch-image-size -16 is out of range [1, 8192]"),
])
def test_options_that_contradict_the_checkpoint_name_both_values(info, cli, message):
    with pytest.raises(ConfigError) as err:
        build_task_config("refcoco", info.task, cli, checkpoint=info)
    assert str(err.value) == message


def test_python_callers_see_keyword_names(info):
    with pytest.raises(ConfigError, match="^num_bins=500 contradicts the checkpoint's num_bins 1000$"):
        build_task_config("refcoco", info.task, {"num_bins": 500}, checkpoint=info, style="keyword")
    with pytest.raises(ConfigError, match="^patch_image_size='64' is not an integer$"):
        build_task_config("refcoco", info.task, {"patch_image_size": "64"}, checkpoint=info, style="keyword")


@pytest.mark.parametrize("cli", [
    {}, {"patch_image_size": 32}, {"patch_image_size": 672}, {"num_bins": 1000}, {"max_src_length": 1024},
])
def test_legitimate_overrides_pass(info, cli):
    cfg = build_task_config("refcoco", info.task, cli, checkpoint=info)
    assert all(getattr(cfg, k) == v for k, v in cli.items())


def test_another_task_is_not_a_contradiction(info):
    assert build_task_config("caption", info.task, {}, checkpoint=info).patch_image_size == 64


def test_a_tokenizer_of_another_size_contradicts_the_checkpoint(info, spm_dir, tmp_path):
    other = tmp_path / "tok"
    other.mkdir()
    shutil.copy(os.path.join(spm_dir, "spm.model"), other / "spm.model")
    lines = open(os.path.join(spm_dir, "dict.txt")).read().splitlines()
    (other / "dict.txt").write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(ConfigError, match=rf"^--bpe-dir {other} gives a dictionary of {info.vocab_size - 5} entries, "
                                          rf"which contradicts the checkpoint's {info.vocab_size} embedding rows$"):
        build_task_config("refcoco", info.task, {"bpe_dir": str(other)}, checkpoint=info)
    check_against_checkpoint(info, build_task_config("refcoco", info.task, {"bpe_dir": spm_dir}))  # same folder


def test_saved_task_keys_the_task_does_not_know_are_warned(info, caplog):
    saved = {**info.task, "num_binz": 7}
    build_task_config("refcoco", saved, {}, checkpoint=info)
    assert warned(caplog) == [f"{info.path}: refcoco task config keys this version does not know, ignored: num_binz"]


def test_checkpoint_info_records_the_vocabulary(info, spm_dir):
    assert (info.num_bins, info.code_dict_size, info.bpe_dir) == (1000, 8192, spm_dir)
    assert info.vocab_size == len(load_tokenizer(spm_dir).dictionary)


def test_evaluate_prints_a_bad_checkpoint_value_in_one_line(ckpt, tmp_path, capsys):
    from ofa.cli.evaluate import main

    path = rewrite(ckpt, tmp_path / "bad.pt", {"encoder_layers": 10 ** 9})
    assert main(["--path", path, str(tmp_path / "data.tsv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ofa-evaluate: error: model config 'encoder_layers' = 1000000000 in {path} is out of range [1, 256]"


# ---------------------------------------------------------------------------- the official reference
def test_the_reference_checkpoint_loads_without_a_warning(tmp_path, bpe_dir, caplog):
    if not (REFERENCE / "ofa_micro_a.pt.gz").is_file():
        pytest.skip("../shared/reference (official reference checkpoint) is not available")
    path = tmp_path / "ofa_micro_a.pt"
    with gzip.open(REFERENCE / "ofa_micro_a.pt.gz") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    _, _, info = load_model(str(path), bpe_dir=bpe_dir)
    cfg = build_task_config("caption", info.task, {"bpe_dir": bpe_dir}, checkpoint=info)
    assert warned(caplog) == []
    assert (info.num_bins, info.vocab_size, cfg.patch_image_size) == (1000, 59457, 480)
    assert issubclass(ConfigError, UserError)
