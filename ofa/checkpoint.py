"""Checkpoint I/O: official fairseq ``.pt``, mmpretrain ``.pth``, and safetensors exports.

- ``load_model(path, bpe_dir=None, ema=False)`` reads any of the three formats and returns
  ``(model, dictionary, info)`` with the model in eval mode. Loading is strict: every weight must be
  consumed and every shape must match; derived buffers (relative-position buckets, the decoder's
  ``image_position_idx``, ``version``) are rebuilt, never trusted; fp16 weights are upcast.
- Unpickling is safe: ``torch.load(weights_only=True)`` with an allowlist of the globals real
  fairseq checkpoints hold (``SAFE_GLOBALS``). Any other global is refused before it runs.
- mmpretrain checkpoints (``ofa-base_3rdparty-finetuned_*``) are bare state dicts with renamed keys
  and no config: keys are mapped back with ``official_to_mmpretrain`` (architecture.md 7.3) and the
  architecture is read off the tensor shapes (``infer_config``).
- ``export_safetensors(model, tokenizer_dir, out_dir)`` writes ``model.safetensors`` +
  ``config.json`` + the tokenizer files; ``load_model(out_dir)`` reads it back.
- LoRA: a checkpoint whose state dict holds peft adapters (``--lora-rank``) is merged on load,
  ``W + (B @ A) * alpha / rank`` (``ofa.model.finetune.merge_lora_state``), into a plain model whose config has
  ``lora_rank`` 0, so peft is not needed to load it; ``export_safetensors`` writes the merged weights.
  The merge uses the checkpoint's own rank and alpha; ``overrides={"lora_rank": R}`` adds fresh adapters of rank R
  over the (merged or plain) weights.
- ``save_checkpoint`` writes this project's fairseq-format file (adapters unmerged). Every write goes to a temporary
  file first and is renamed into place, so a failed save never replaces a good file.
- A checkpoint's configs are input: every model and task value is checked against its type and range
  (``ofa.model.config.check_model_config``, ``ofa.config_checks``) before the tokenizer or the model is
  built; keys nothing reads are reported in one warning line (the official trainer's own arguments are
  known and stay quiet); unknown ``overrides`` are an error.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ofa.config_checks import (check_saved_task_values, check_values, reject_unknown_keys, subject,
                               warn_unknown_keys)
from ofa.errors import UserError
from ofa.io_utils import atomic_output, write_atomic
from ofa.model.config import MODEL_LIMITS, OFAModelConfig, check_model_config, config_for_arch
from ofa.model.finetune import adapt_plain_state, has_adapters, lora_scale, merge_lora_state, merge_model_state
from ofa.model.ofa_model import OFAModel
from ofa.model.resnet import RESNET_LAYERS
from ofa.tokenizer import load_tokenizer


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be loaded safely or does not fit the model."""


def _numpy_globals() -> List[Any]:
    out: List[Any] = [np.dtype, np.ndarray]
    for mod_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            mod = __import__(mod_name, fromlist=["scalar", "_reconstruct"])
            out += [mod.scalar, mod._reconstruct]
            break
        except (ImportError, AttributeError):
            continue
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


# Globals that fairseq trainer checkpoints legitimately pickle: the legacy ``args`` / ``cfg.model``
# Namespace, OrderedDicts, and numpy scalars in ``extra_state`` (best metric values).
SAFE_GLOBALS: List[Any] = [argparse.Namespace, collections.OrderedDict, collections.defaultdict] + _numpy_globals()


def safe_load(path: str) -> Any:
    """``torch.load`` restricted to tensors, containers and ``SAFE_GLOBALS``. ``.gz`` files are unpacked in memory."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    source: Any = path
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            source = io.BytesIO(f.read())
    try:
        # leaving a ``safe_globals`` block removes its globals even when ``setup`` had added them for good (torch
        # 2.14), which broke fairseq's own loads later in a training process: use the block only when needed
        allowed = set(map(id, torch.serialization.get_safe_globals()))
        if all(id(g) in allowed for g in SAFE_GLOBALS):
            return torch.load(source, map_location="cpu", weights_only=True)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError on older versions)
        message = str(e)
        found = re.search(r"(?:Unsupported global|GLOBAL)[^\n]*", message)
        detail = found.group(0) if found else message.splitlines()[0] if message else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it holds an object outside the safe allowlist ({detail}). "
            "Nothing from it was executed. If you trust this file, convert it with a script you "
            "control; OFA checkpoints only need tensors, containers and argparse.Namespace."
        ) from None


# ---------------------------------------------------------------------------- key remapping
# (pattern, replacement) pairs of mmpretrain's tools/model_converters/ofa.py, applied in order.
_MM_RULES: List[Tuple[str, str]] = [
    (r"\.type_embedding\.", ".embed_type."),
    (r"\.layernorm_embedding\.", ".embedding_ln."),
    (r"\.patch_layernorm_embedding\.", ".image_embedding_ln."),
    (r"^encoder\.layer_norm\.", "encoder.final_ln."),
    (r"\.attn_ln\.", ".attn_mid_ln."),
    (r"\.ffn_layernorm\.", ".ffn_mid_ln."),
    (r"\.final_layer_norm", ".ffn_ln"),
    (r"^(encoder\.layers\.\d+)\.self_attn\.", r"\1.attn."),
    (r"^(encoder\.layers\.\d+)\.self_attn_layer_norm\.", r"\1.attn_ln."),
    (r"\.code_layernorm_embedding\.", ".code_embedding_ln."),
    (r"^decoder\.layer_norm\.", "decoder.final_ln."),
    (r"\.self_attn_ln", ".self_attn_mid_ln"),
    (r"\.cross_attn_ln", ".cross_attn_mid_ln"),
    (r"\.encoder_attn_layer_norm", ".cross_attn_ln"),
    (r"\.encoder_attn", ".cross_attn"),
    (r"^(decoder\.layers\.\d+)\.self_attn_layer_norm\.", r"\1.self_attn_ln."),
]


def official_to_mmpretrain(key: str) -> Optional[str]:
    """Official fairseq key -> mmpretrain key (``None`` for keys the converter drops)."""
    if "version" in key:
        return None
    for pattern, repl in _MM_RULES:
        key = re.sub(pattern, repl, key)
    return "model." + key


DERIVED_SUFFIXES = ("token_rp_bucket", "image_rp_bucket", "image_position_idx", ".version")
TIED_KEYS = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")


def _is_derived(key: str) -> bool:
    return key.endswith(DERIVED_SUFFIXES) or key == "version"


def detect_format(obj: Any) -> str:
    """``"fairseq"`` (trainer dict), ``"mmpretrain"`` (bare, ``model.`` keys) or ``"official_bare"``."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return "fairseq"
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and "model" not in obj:
        obj = obj["state_dict"]  # mmengine wraps weights as {"state_dict": ..., "meta": ...}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if any(k.startswith("model.") for k in obj):
            return "mmpretrain"
        return "official_bare"
    raise CheckpointError("not an OFA checkpoint: expected a fairseq trainer dict or a state dict of tensors")


_MM_INVERSE_RULES: List[Tuple[str, str]] = [
    # applied to an mmpretrain key (without ``model.``) to list possible official names
    (r"\.embed_type\.", ".type_embedding."),
    (r"\.embedding_ln\.", ".layernorm_embedding."),
    (r"\.image_embedding_ln\.", ".patch_layernorm_embedding."),
    (r"^encoder\.final_ln\.", "encoder.layer_norm."),
    (r"^decoder\.final_ln\.", "decoder.layer_norm."),
    (r"\.code_embedding_ln\.", ".code_layernorm_embedding."),
    (r"\.ffn_mid_ln\.", ".ffn_layernorm."),
    (r"\.ffn_ln\.", ".final_layer_norm."),
    (r"^(encoder\.layers\.\d+)\.attn_mid_ln\.", r"\1.attn_ln."),
    (r"^(encoder\.layers\.\d+)\.attn_ln\.", r"\1.self_attn_layer_norm."),
    (r"^(encoder\.layers\.\d+)\.attn\.", r"\1.self_attn."),
    (r"^(decoder\.layers\.\d+)\.self_attn_mid_ln\.", r"\1.self_attn_ln."),
    (r"^(decoder\.layers\.\d+)\.self_attn_ln\.", r"\1.self_attn_layer_norm."),
    (r"^(decoder\.layers\.\d+)\.cross_attn_mid_ln\.", r"\1.cross_attn_ln."),
    (r"^(decoder\.layers\.\d+)\.cross_attn_ln\.", r"\1.encoder_attn_layer_norm."),
    (r"^(decoder\.layers\.\d+)\.cross_attn\.", r"\1.encoder_attn."),
]


def _mm_to_official(mm_key: str) -> str:
    """mmpretrain key without ``model.`` -> official key (first inverse rule that matches)."""
    for pattern, repl in _MM_INVERSE_RULES:
        new = re.sub(pattern, repl, mm_key)
        if new != mm_key:
            return new
    return mm_key


def from_mmpretrain(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an mmpretrain state dict to official keys; each rename is checked by mapping it forward again."""
    out: Dict[str, torch.Tensor] = {}
    bad = []
    for mm_key, value in state.items():
        official = _mm_to_official(mm_key[len("model."):]) if mm_key.startswith("model.") else mm_key
        if official_to_mmpretrain(official) != mm_key:
            bad.append(mm_key)
        out[official] = value
    if bad:
        raise CheckpointError(f"mmpretrain checkpoint has keys with no OFA counterpart: {bad[:10]}")
    return out


# ---------------------------------------------------------------------------- config inference
def _count_indexed(state: Dict[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state for m in [pat.match(k)] if m}
    return max(found) + 1 if found else 0


def infer_config(state: Dict[str, torch.Tensor], source: Optional[str] = None) -> OFAModelConfig:
    """Read the architecture off an official-key state dict (for config-less checkpoints).

    Sizes come from tensor shapes; NormFormer and embedding switches from which keys exist. The
    decoder's position entanglement cannot be seen in weights; it is off, as in every release. The sizes
    are checked like any config (``check_model_config``; ``source`` names the file in the message) before
    the config is built.
    """
    try:
        vocab, d = state["encoder.embed_tokens.weight"].shape
        heads = state["encoder.token_rel_pos_table_list.0.weight"].shape[1]
        dec_heads = state["decoder.token_rel_pos_table_list.0.weight"].shape[1]
        ffn = state["encoder.layers.0.fc1.weight"].shape[0]
        dec_ffn = state["decoder.layers.0.fc1.weight"].shape[0]
        token_rel = state["encoder.token_rel_pos_table_list.0.weight"].shape[0]
        image_pos = state["encoder.embed_image_positions.weight"].shape[0]
        src_pos = state["encoder.embed_positions.weight"].shape[0]
        tgt_pos = state["decoder.embed_positions.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"cannot infer the architecture: key {e} is missing") from None
    blocks = [_count_indexed(state, f"encoder.embed_images.layer{s}.") for s in (1, 2, 3)]
    resnet = {tuple(v): k for k, v in RESNET_LAYERS.items() if k not in ("resnet34",)}.get(tuple(blocks))
    if resnet is None:
        raise CheckpointError(f"cannot infer the ResNet type from its block counts {blocks}")
    image_bucket = int(round((image_pos - 1) ** 0.5))
    code_image_size = 128
    if "decoder.image_position_idx" in state:
        n = state["decoder.image_position_idx"].numel() - 1
        for tail in (769, 768):
            w = int(round(max(n - tail, 0) ** 0.5))
            if w * w == n - tail and w > 0:
                code_image_size = w * 8
                break

    def has(fragment: str) -> bool:
        return any(fragment in k for k in state)

    values = dict(
        encoder_embed_dim=d, decoder_embed_dim=d, encoder_ffn_embed_dim=ffn, decoder_ffn_embed_dim=dec_ffn,
        encoder_layers=_count_indexed(state, "encoder.layers."),
        decoder_layers=_count_indexed(state, "decoder.layers."),
        encoder_attention_heads=heads, decoder_attention_heads=dec_heads, resnet_type=resnet,
        token_bucket_size=(token_rel + 1) // 2, image_bucket_size=image_bucket,
        max_source_positions=src_pos - 2, max_target_positions=tgt_pos - 2, code_image_size=code_image_size,
        layernorm_embedding=has("encoder.layernorm_embedding."),
        patch_layernorm_embedding=has("encoder.patch_layernorm_embedding."),
        code_layernorm_embedding=has("decoder.code_layernorm_embedding."),
        add_type_embedding=has("encoder.type_embedding."),
        scale_attn=has(".attn_ln."), scale_fc=has(".ffn_layernorm."), scale_heads=has(".c_attn"),
        scale_resids=has(".w_resid"), encoder_normalize_before=has("encoder.layer_norm."),
        decoder_normalize_before=has("decoder.layer_norm."), disable_entangle=True,
        # not visible in weights; every released checkpoint ties all embeddings and does not scale them
        share_all_embeddings=True, share_decoder_input_output_embed=True, no_scale_embedding=True,
    )
    check_model_config(values, where=f"{source or 'the state dict'} (read off its tensors)")
    return OFAModelConfig(**values)


# ---------------------------------------------------------------------------- strict loading
def load_state_strict(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model``: every non-derived key must match by name and shape.

    Derived buffers are skipped whether present or not. Floating tensors are cast to the model's
    dtype (fp16 checkpoints are upcast). Raises ``CheckpointError`` naming the missing, unexpected
    and mis-shaped keys.
    """
    own = model.state_dict()
    state = dict(state)
    if "encoder.embed_tokens.weight" in state:
        for key in TIED_KEYS:
            if key in state and key in own:
                if state[key].shape == state["encoder.embed_tokens.weight"].shape and not torch.equal(
                    state[key], state["encoder.embed_tokens.weight"]
                ):
                    raise CheckpointError(f"{source}: {key} differs from encoder.embed_tokens.weight, "
                                          "but OFA ties all three")
            state.setdefault(key, state["encoder.embed_tokens.weight"])
    wanted = {k for k in own if not _is_derived(k)}
    given = {k for k in state if not _is_derived(k)}
    missing = sorted(wanted - given)
    unexpected = sorted(given - wanted)
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in wanted & given if state[k].shape != own[k].shape
    )
    if missing or unexpected or mis_shaped:
        def show(items):
            return f"{len(items)} {items[:8]}{' ...' if len(items) > 8 else ''}"
        raise CheckpointError(
            f"{source} does not fit the model: missing {show(missing)}; unexpected {show(unexpected)}; "
            f"mis-shaped {show(mis_shaped)}"
        )
    with torch.no_grad():
        for key in wanted:
            target = own[key]
            value = state[key]
            target.copy_(value.to(target.dtype) if value.is_floating_point() else value)


@dataclass
class CheckpointInfo:
    """What ``load_model`` found: the model config, the task config (if any) and the source format."""

    model: OFAModelConfig
    task: Dict[str, Any] = field(default_factory=dict)
    format: str = ""
    path: str = ""
    ema: bool = False
    # what the loaded vocabulary was built with (``ofa.config_checks.check_against_checkpoint`` compares task
    # options with them; ``None`` where unknown): the tokenizer folder, the code and bin counts, and the
    # embedding rows the checkpoint's weights have
    bpe_dir: Optional[str] = None
    code_dict_size: Optional[int] = None
    num_bins: Optional[int] = None
    vocab_size: Optional[int] = None


def _as_dict(obj: Any) -> Dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    return dict(vars(obj))


def _config_values(source: Any) -> Dict[str, Any]:
    """A config as a plain dict, from a Namespace, dict, DictConfig or dataclass."""
    if dataclasses.is_dataclass(source):
        return dataclasses.asdict(source)
    if isinstance(source, dict):
        return dict(source)
    if hasattr(source, "items"):
        return dict(source.items())
    if hasattr(source, "__dict__"):
        return dict(vars(source))
    raise CheckpointError(f"the model config is a {type(source).__name__}, not a mapping")


def _model_fields() -> List[str]:
    return [f.name for f in dataclasses.fields(OFAModelConfig)]


def check_overrides(overrides: Dict[str, Any]) -> None:
    """``load_model``'s ``overrides``: every key must be a model config field and every value in range
    (``ConfigError`` otherwise, before anything is loaded)."""
    reject_unknown_keys(overrides, _model_fields(), scope="model config", given_as="overrides")
    check_values(overrides, MODEL_LIMITS, scope="model config", style="keyword")


def _model_config(values: Dict[str, Any], overrides: Dict[str, Any], where: str) -> OFAModelConfig:
    """The checkpoint's model config with ``overrides``: unknown keys warned about, every value checked
    (``where`` names the file), before anything is built."""
    names = _model_fields()
    warn_unknown_keys(values, names, scope="model config", where=where)
    kept = {k: v for k, v in values.items() if k in names and k not in overrides}
    check_model_config({**kept, **overrides}, where=where)
    return OFAModelConfig.from_any(kept, **overrides)


def _resolve_tokenizer(bpe_dir: Optional[str], task_cfg: Dict[str, Any], path: str, own: Optional[str] = None):
    """``(tokenizer, folder)``: the explicit ``bpe_dir`` (an error names what it lacks), else the first of
    ``own`` (an export's folder), the checkpoint's saved ``bpe_dir`` and the checkpoint's folder that holds a
    tokenizer (a saved path from another machine is skipped)."""
    codes, bins = task_cfg.get("code_dict_size", 8192), task_cfg.get("num_bins", 1000)
    if bpe_dir:
        return load_tokenizer(bpe_dir, codes, bins, option="bpe_dir"), bpe_dir
    for c in (own, task_cfg.get("bpe_dir"), os.path.dirname(os.path.abspath(path))):
        if c and isinstance(c, str) and os.path.isdir(c):
            try:
                return load_tokenizer(c, codes, bins), c
            except FileNotFoundError:
                continue
    raise CheckpointError(
        f"{path}: no tokenizer found; pass bpe_dir= (the official GPT-2 BPE folder with dict.txt, "
        "or a SentencePiece folder from `ofa-tokenizer train`)"
    )


def load_model(path: str, bpe_dir: Optional[str] = None, ema: bool = False,
               overrides: Optional[Dict[str, Any]] = None) -> Tuple[OFAModel, Any, CheckpointInfo]:
    """Load an OFA model from a fairseq ``.pt``, an mmpretrain ``.pth`` or a safetensors export.

    Args:
        path: checkpoint file (``.pt``, ``.pth``, ``.pt.gz``) or an export directory.
        bpe_dir: tokenizer folder; defaults to the checkpoint's ``task.bpe_dir`` or the export's own.
        ema: use the EMA weights (``extra_state["ema"]``) when the checkpoint carries them.
        overrides: model-config fields to change (e.g. ``{"attention_impl": "math"}``); only
            fields that do not change parameter shapes make sense here.

    Returns:
        ``(model in eval mode, fairseq Dictionary, CheckpointInfo)``.
    """
    overrides = dict(overrides or {})
    check_overrides(overrides)
    if os.path.isdir(path):
        return _load_export(path, bpe_dir, overrides)
    obj = safe_load(path)
    fmt = detect_format(obj)
    if fmt != "fairseq" and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    task_cfg: Dict[str, Any] = {}
    used_ema = False
    if fmt == "fairseq":
        cfg = _as_dict(obj.get("cfg"))
        model_cfg = cfg.get("model") or obj.get("args")
        task_cfg = _as_dict(cfg.get("task")) or _as_dict(obj.get("args"))
        state = obj["model"]
        extra = obj.get("extra_state") or {}
        if ema:
            if not isinstance(extra, dict) or "ema" not in extra:
                raise CheckpointError(f"{path}: ema=True but the checkpoint carries no EMA weights")
            state, used_ema = extra["ema"], True
        if model_cfg is not None:
            saved = _config_values(model_cfg)
            config = _model_config(saved, overrides, where=path)
            state, config = _merge_adapters(state, saved, config, overrides, path)
        else:
            config = _with_overrides(infer_config(state, source=path), overrides, path)
    else:
        state = from_mmpretrain(obj) if fmt == "mmpretrain" else obj
        config = _with_overrides(infer_config(state, source=path), overrides, path)
    check_saved_task_values(task_cfg, where=path)
    return _build(config, state, task_cfg, bpe_dir, path, fmt, used_ema)


def _merge_adapters(state: Dict[str, torch.Tensor], saved: Dict[str, Any], config: OFAModelConfig,
                    overrides: Dict[str, Any], path: str) -> Tuple[Dict[str, torch.Tensor], OFAModelConfig]:
    """``(state, config)`` with the LoRA adapters of ``state`` (if any) folded into its weights at the scale of the
    checkpoint's own ``saved`` config (``lora_alpha / lora_rank``, whatever ``overrides`` say); the config's
    ``lora_rank`` becomes 0 (a plain model), or the override's rank (fresh adapters over the merged weights)."""
    if not has_adapters(state):
        return state, config
    rank, alpha = saved.get("lora_rank") or 0, saved.get("lora_alpha") or 0.0
    if rank <= 0:
        raise CheckpointError(f"{path}: the weights hold LoRA adapters but the model config has no lora_rank")
    try:
        state = merge_lora_state(state, lora_scale(rank, alpha))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return state, dataclasses.replace(config, lora_rank=overrides.get("lora_rank", 0))


def _with_overrides(config: OFAModelConfig, overrides: Dict[str, Any], where: str) -> OFAModelConfig:
    if not overrides:
        return config
    check_model_config({**dataclasses.asdict(config), **overrides}, where=where)
    return dataclasses.replace(config, **overrides)


def _build(config: OFAModelConfig, state: Dict[str, torch.Tensor], task_cfg: Dict[str, Any],
           bpe_dir: Optional[str], path: str, fmt: str, used_ema: bool = False, own: Optional[str] = None):
    """Tokenizer, then the model (its embedding must match the dictionary), then the weights (``state`` plain:
    ``_merge_adapters`` came first); a ``lora_rank`` in ``config`` (an override) builds a LoRA model with fresh
    adapters over the weights."""
    tokenizer, folder = _resolve_tokenizer(bpe_dir, task_cfg, path, own)
    dictionary = tokenizer.dictionary
    if "encoder.embed_tokens.weight" not in state:
        raise CheckpointError(f"{path}: no encoder.embed_tokens.weight among its {len(state)} tensors; "
                              "not an OFA checkpoint?")
    vocab_rows = state["encoder.embed_tokens.weight"].shape[0]
    if vocab_rows != len(dictionary):
        raise CheckpointError(f"{path}: the checkpoint has {vocab_rows} embedding rows but the dictionary "
                              f"has {len(dictionary)} entries; wrong bpe_dir or num_bins/code_dict_size?")
    model = OFAModel.from_config(config, dictionary)
    if config.lora_rank > 0:
        state = adapt_plain_state(state, model.state_dict())
    load_state_strict(model, state, source=path)
    model.eval()
    vocab = tokenizer.vocab
    return model, dictionary, CheckpointInfo(config, task_cfg, fmt, path, used_ema, bpe_dir=folder,
                                             code_dict_size=vocab.code_dict_size, num_bins=vocab.num_bins,
                                             vocab_size=vocab_rows)


def build_model_for_arch(arch: str, bpe_dir: str, released: bool = True, **overrides) -> Tuple[OFAModel, Any]:
    """A freshly initialised model of a named architecture (with the released flags by default).

    Returns:
        ``(model, dictionary)``.
    """
    tokenizer = load_tokenizer(bpe_dir)
    model = OFAModel.from_config(config_for_arch(arch, released, **overrides), tokenizer.dictionary)
    return model, tokenizer.dictionary


# ---------------------------------------------------------------------------- writing
def save_checkpoint(model: OFAModel, path: str, task_cfg: Optional[Dict[str, Any]] = None,
                    extra_state: Optional[Dict[str, Any]] = None) -> None:
    """Write a fairseq-format checkpoint (``cfg.model`` as a Namespace, like the official files)."""
    payload = {
        "args": None,
        "cfg": {"model": argparse.Namespace(**dataclasses.asdict(model.cfg), arch="ofa"),
                "task": dict(task_cfg or {})},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "criterion": None,
        "optimizer_history": [],
        "task_state": {},
        "extra_state": dict(extra_state or {}),
    }
    with atomic_output(path) as tmp:  # readers never see half a file
        torch.save(payload, tmp)


EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
TOKENIZER_FILES = ("encoder.json", "vocab.bpe", "dict.txt", "spm.model")


def export_safetensors(model: OFAModel, tokenizer_dir: str, out_dir: str,
                       task_cfg: Optional[Dict[str, Any]] = None) -> str:
    """Write ``model.safetensors`` (tied and derived tensors left out), ``config.json`` and the tokenizer files.
    LoRA adapters are merged into the weights (the export is a plain model, ``lora_rank`` 0)."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    state, model_cfg = merge_model_state(model)
    tensors = {
        k: v.detach().cpu().contiguous() for k, v in state.items()
        if not _is_derived(k) and k not in TIED_KEYS
    }
    config = {"format": "ofa-safetensors", "version": 1, "model": dataclasses.asdict(model_cfg),
              "task": dict(task_cfg or {})}
    with atomic_output(os.path.join(out_dir, EXPORT_WEIGHTS)) as tmp:
        save_file(tensors, tmp)
    for name in TOKENIZER_FILES:
        src = os.path.join(tokenizer_dir, name)
        if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(os.path.join(out_dir, name)):
            with atomic_output(os.path.join(out_dir, name)) as tmp:
                shutil.copyfile(src, tmp)
    write_atomic(os.path.join(out_dir, EXPORT_CONFIG), json.dumps(config, indent=1, sort_keys=True))
    return out_dir


EXPORT_KEYS = ("format", "version", "model", "task")


def read_export_config(cfg_path: str) -> Dict[str, Any]:
    """An export's ``config.json``, checked: valid JSON holding ``format`` ``ofa-safetensors``, a ``model``
    object and an optional ``task`` object (other top-level keys are warned about); the model and task values
    are checked against their ranges (``check_model_config``, ``check_saved_task_values``)."""
    try:
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, found {type(config).__name__}")
    if config.get("format") != "ofa-safetensors":
        raise CheckpointError(f"{cfg_path}: unknown format {config.get('format')!r}")
    warn_unknown_keys(config, EXPORT_KEYS, scope="top-level", where=cfg_path)
    for key, required in (("model", True), ("task", False)):
        if (required or key in config) and not isinstance(config.get(key), dict):
            raise CheckpointError(f"{cfg_path}: {subject('export', key, config.get(key))} is not a JSON object")
    check_saved_task_values(config.get("task", {}), where=cfg_path)
    return config


def _load_export(path: str, bpe_dir: Optional[str], overrides: Dict[str, Any]):
    from safetensors.torch import load_file

    cfg_path = os.path.join(path, EXPORT_CONFIG)
    weights = os.path.join(path, EXPORT_WEIGHTS)
    if not (os.path.isfile(cfg_path) and os.path.isfile(weights)):
        raise CheckpointError(f"{path} is not an OFA export: expected {EXPORT_CONFIG} and {EXPORT_WEIGHTS}")
    config = read_export_config(cfg_path)
    model_cfg = _model_config(config["model"], overrides, where=cfg_path)
    state, model_cfg = _merge_adapters(load_file(weights), config["model"], model_cfg, overrides, weights)
    model, dictionary, info = _build(model_cfg, state, config.get("task", {}), bpe_dir, weights,
                                     "safetensors", own=path)  # the export carries its own tokenizer
    info.path = path
    return model, dictionary, info
