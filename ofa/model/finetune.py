"""Parameter-efficient finetuning: LoRA adapters (through ``peft``), BitFit, frozen parameters, and merging.

The options are ``OFAModelConfig`` fields, so ``ofa-train`` has them as flags (``--lora-rank``,
``--lora-alpha``, ``--lora-targets``, ``--lora-dropout``, ``--freeze``, ``--bitfit``), and
``OFAModel.from_config`` applies them right after construction (``apply_finetuning``). Which parameters
train, decided in this order:

1. every parameter (but the shared embedding with ``--freeze-encoder-embedding`` / ``--freeze-decoder-embedding``);
2. ``--lora-rank R`` (> 0): ``peft.inject_adapter_in_model`` wraps the chosen linear maps of every encoder and
   decoder layer (``--lora-targets``: ``q,k,v,out`` are the self- and cross-attention projections, ``fc1,fc2``
   the FFN) and leaves only the adapters trainable: ``W x + (alpha / R) B A x``, ``A`` ``[R, in]`` drawn
   as peft draws it, ``B`` ``[out, R]`` zero, so a fresh adapter changes nothing;
3. ``--bitfit``: bias terms only (with LoRA: the adapters and the bias terms);
4. ``--freeze P1,P2``: every parameter whose name matches a pattern is frozen, whatever came before.
   A pattern is ``fnmatch`` style (``encoder.embed_images.*`` is the ResNet, ``*embed_tokens*`` the
   embeddings) or ``re:REGEX`` (a full match); it is tried on the name and, for a LoRA-wrapped map, on the
   name without ``.base_layer`` too. A pattern that matches no parameter is an error (a typo).

fairseq's trainer gives the optimizer only the parameters that require a gradient. BatchNorm running
statistics are buffers: in training mode they follow the data whatever is frozen (``--freeze-resnet`` keeps them).

State dicts of a LoRA model hold peft's names (``...q_proj.base_layer.weight``,
``...q_proj.lora_A.default.weight``, ``...q_proj.lora_B.default.weight``). ``adapt_plain_state`` lets a plain
(official) state dict load into a LoRA model (fresh adapters); ``merge_lora_state`` folds the adapters into
plain weights, ``W + (B @ A) * alpha / R``, so that a merged model is a plain ``OFAModel``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
import warnings
from typing import Dict, Iterable, List, Optional, Tuple

from torch import Tensor, nn

from ofa.errors import ConfigError
from ofa.model import onednn
from ofa.model.config import freeze_patterns, lora_target_names

ADAPTER = "default"  # peft's adapter name; it is part of the state-dict keys
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)\.(?P<adapter>[^.]+)\.weight$")
_BASE = ".base_layer."


def lora_scale(rank: int, alpha: float) -> float:
    """The adapters' scale ``alpha / rank`` (``alpha`` 0 means ``alpha = rank``, a scale of 1)."""
    if rank <= 0:
        raise ValueError(f"lora_rank must be > 0, got {rank}")
    return (alpha or rank) / rank


def lora_target_regex(targets: str) -> str:
    """The full-match regex of the module names ``--lora-targets`` names, e.g. ``encoder.layers.3.fc1`` and
    ``decoder.layers.0.encoder_attn.q_proj``; the position projections (``pos_q_linear`` ...) never match."""
    names = lora_target_names(targets)
    attn = [n for n in names if n.endswith("_proj")]
    ffn = [n for n in names if not n.endswith("_proj")]
    inner = [f"(self_attn|encoder_attn)\\.({'|'.join(attn)})"] if attn else []
    inner += ffn
    return f"(encoder|decoder)\\.layers\\.\\d+\\.({'|'.join(inner)})"


def inject_lora(model: nn.Module, rank: int, alpha: float, targets: str, dropout: float = 0.0) -> nn.Module:
    """Wrap the target linear maps of ``model`` in peft LoRA layers, in place; only the adapters stay trainable.

    Returns:
        ``model`` (the same object, its target ``nn.Linear`` modules replaced by ``peft`` LoRA layers).
    """
    with warnings.catch_warnings():  # peft's import warns about torch and transformers APIs it still uses
        warnings.simplefilter("ignore")
        import peft

    # peft's ``lora_alpha`` is the numerator; ``alpha / rank`` is the scale
    config = peft.LoraConfig(r=rank, lora_alpha=(alpha or rank), lora_dropout=dropout,
                             target_modules=lora_target_regex(targets), bias="none")
    model = peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for module in model.modules():  # peft's merge() / unmerge() rewrite a base weight through .data
        base = getattr(module, "base_layer", None)
        if isinstance(base, nn.Module):
            onednn.keep_unpacked(base)
    return model


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def matching_names(names: Iterable[str], patterns: List[str]) -> Tuple[List[str], List[str]]:
    """``(names that match a pattern, patterns that match no name)``; a name also matches in its form
    without ``.base_layer`` (the name it has in a plain model)."""
    names = list(names)
    hit, used = [], set()
    for name in names:
        forms = (name, name.replace(_BASE, "."))
        found = [p for p in patterns if any(_pattern_matches(p, f) for f in forms)]
        if found:
            hit.append(name)
            used.update(found)
    return hit, [p for p in patterns if p not in used]


def set_trainable(model: nn.Module, bitfit: bool = False, freeze: str = "") -> None:
    """Steps 3 and 4 of the module docstring: ``bitfit`` keeps only bias terms (and LoRA adapters) trainable,
    then the ``freeze`` patterns freeze what they match.

    Raises:
        ConfigError: a ``freeze`` pattern that matches no parameter (one line, naming the pattern).
    """
    params = dict(model.named_parameters(remove_duplicate=False))  # tied names too (output_projection)
    if bitfit:
        for name, p in params.items():
            p.requires_grad_(name.endswith(".bias") or is_adapter_key(name))
    patterns = freeze_patterns(freeze)
    if patterns:
        hit, unused = matching_names(params, patterns)
        if unused:
            raise ConfigError(f"--freeze pattern {unused[0]!r} matches no parameter (names look like "
                              f"{next(iter(params))!r}; comma-separated fnmatch patterns or re:REGEX)")
        for name in hit:
            params[name].requires_grad_(False)


def apply_finetuning(model: nn.Module, cfg) -> nn.Module:
    """LoRA (``cfg.lora_rank > 0``), then BitFit and the freeze patterns, in place (the module docstring)."""
    if cfg.lora_rank > 0:
        inject_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lora_dropout)
    set_trainable(model, cfg.bitfit, cfg.freeze)
    return model


def trainable_counts(model: nn.Module) -> Tuple[int, int]:
    """``(trainable, total)`` parameter elements (tied tensors counted once)."""
    total = trained = 0
    for p in model.parameters():
        total += p.numel()
        trained += p.numel() if p.requires_grad else 0
    return trained, total


# ---------------------------------------------------------------------------- state dicts
def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key (or parameter name) is a LoRA adapter weight (``...lora_A.default.weight``)."""
    return _LORA_KEY.match(key) is not None


def has_adapters(state: Dict[str, Tensor]) -> bool:
    return any(is_adapter_key(k) for k in state)


def merge_lora_state(state: Dict[str, Tensor], scale: float) -> Dict[str, Tensor]:
    """Fold LoRA adapters into plain weights: a new state dict with ``M.weight = W + (B @ A) * scale``
    (computed in float32, stored in ``W``'s dtype) and ``M.bias`` for every adapted module ``M``; every other
    key is kept as it is. Pure: ``state`` is not changed.

    Args:
        state: a LoRA model's state dict: ``M.base_layer.weight`` ``[out, in]``, ``M.base_layer.bias``,
            ``M.lora_A.<adapter>.weight`` ``A [R, in]``, ``M.lora_B.<adapter>.weight`` ``B [out, R]``.
        scale: ``alpha / R`` (``lora_scale``).

    Raises:
        ValueError: an adapter without its partner, its base weight, or of mismatched shapes, or more than one
            adapter on a module.
    """
    parts: Dict[str, Dict[str, Tensor]] = {}
    for key, value in state.items():
        found = _LORA_KEY.match(key)
        if found:
            module = found.group("module")
            if module in parts and found.group("part") in parts[module]:
                raise ValueError(f"{module} carries more than one LoRA adapter; merge one at a time")
            parts.setdefault(module, {})[found.group("part")] = value
    out: Dict[str, Tensor] = {}
    for key, value in state.items():
        if is_adapter_key(key):
            continue
        out[key.replace(_BASE, ".") if _BASE in key else key] = value
    for module, ab in parts.items():
        base = state.get(f"{module}.base_layer.weight")
        if set(ab) != {"A", "B"} or base is None:
            raise ValueError(f"{module}: incomplete LoRA weights (have {sorted(ab)}, base weight "
                             f"{'found' if base is not None else 'missing'})")
        a, b = ab["A"].float(), ab["B"].float()
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(base.shape):
            raise ValueError(f"{module}: LoRA shapes A {tuple(a.shape)}, B {tuple(b.shape)} do not fit the weight "
                             f"{tuple(base.shape)}")
        out[f"{module}.weight"] = (base.float() + (b @ a) * scale).to(base.dtype)
    return out


def adapt_plain_state(state: Dict[str, Tensor], own: Dict[str, Tensor], prefix: str = "") -> Dict[str, Tensor]:
    """A plain (adapter-free) state dict made to fit a LoRA model: ``M.weight`` -> ``M.base_layer.weight``
    (and the bias) for every wrapped module of ``own``, and the adapter weights ``state`` lacks taken from
    ``own`` (their fresh init). Pure; a state that already holds adapters is returned as a copy, unchanged.

    Args:
        state: the checkpoint's state dict.
        own: the LoRA model's own state dict (keys without ``prefix``).
        prefix: the model's key prefix in ``state`` (``""`` for a whole model).
    """
    out = dict(state)
    if has_adapters(state) or not has_adapters(own):
        return out
    for key, value in own.items():
        if _BASE in key:
            plain = prefix + key.replace(_BASE, ".")
            if plain in out:
                out[prefix + key] = out.pop(plain)
        elif is_adapter_key(key):
            out.setdefault(prefix + key, value)
    return out


def merged_config(cfg):
    """The config of a merged model: ``cfg`` with ``lora_rank`` 0 (a plain model; everything else kept)."""
    return dataclasses.replace(cfg, lora_rank=0)


def merge_model_state(model: nn.Module, cfg=None) -> Tuple[Dict[str, Tensor], Optional[object]]:
    """``(state dict with adapters merged, merged config)`` of a model (its own ``cfg`` by default); a model
    without adapters gives its state dict and config as they are."""
    cfg = cfg if cfg is not None else model.cfg
    state = model.state_dict()
    if not has_adapters(state):
        return state, cfg
    return merge_lora_state(state, lora_scale(cfg.lora_rank, cfg.lora_alpha)), merged_config(cfg)
