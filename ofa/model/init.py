"""Weight initialisation of an OFA model built from scratch (loading a checkpoint replaces all of it).

The official model applies a BERT-style init to every ``nn.Linear`` / ``nn.Embedding`` outside the
ResNet: weights ~ N(0, 0.02), zero biases and padding rows (``init_bert_params``). The official sizes use it at
widths 256-1280. At width 128 (the CPU main job) it is 4.4x below a fan-in scale (1 / sqrt(128) = 0.088),
and attention logits ``q . k``, a product of two such projections, start about 20x smaller; there the
grounding stage mostly learned to box the scene's salient object, not the one the text names, and a
larger std let it use the text sooner (experiments/README.md, "What the main job reaches").
``layer_init_std`` re-draws the encoder and decoder layers' attention (q, k, v, out) and FFN (fc1, fc2)
weights with another std; embeddings, the image projection, the position projections and the
relative-position tables keep 0.02.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

OFFICIAL_INIT_STD = 0.02
# attention projections and FFN weights of encoder / decoder layers (``encoder.layers.3.fc1``, ...)
_LAYER_WEIGHT = re.compile(r"^(encoder|decoder)\.layers\.\d+\.((self_attn|encoder_attn)\.(q|k|v|out)_proj|fc1|fc2)$")


def init_bert_params(module: nn.Module) -> None:
    """BERT-style init the official model applies to every module: N(0, 0.02), zero biases and pad rows."""
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(mean=0.0, std=OFFICIAL_INIT_STD)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.data.normal_(mean=0.0, std=OFFICIAL_INIT_STD)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


def layer_weight_names(model: nn.Module) -> list:
    """Names of the ``nn.Linear`` modules ``layer_init_std`` applies to (attention and FFN of every layer)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and _LAYER_WEIGHT.match(name)]


def init_layer_weights(model: nn.Module, std: float) -> int:
    """Re-draw the layers' attention and FFN weights from N(0, std) (biases stay 0); returns how many.

    A no-op at the official 0.02, so that a default model draws exactly the official init sequence.
    """
    if not std > 0:
        raise ValueError(f"layer_init_std must be > 0, got {std}")
    if std == OFFICIAL_INIT_STD:
        return 0
    modules = dict(model.named_modules())
    names = layer_weight_names(model)
    for name in names:
        modules[name].weight.data.normal_(mean=0.0, std=std)
    return len(names)


def seeded_weights(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic weights independent of module init and registration order, for parity checks and
    benchmarks (tests/test_official_oracle.py's stored official outputs were computed with them).

    Parameters are visited in sorted-name order from one seeded generator. 1-D gains (LayerNorm /
    BatchNorm weights, head scales, residual scales) are ``1 + 0.1 N``, biases ``0.1 N``, matrices
    and kernels ``N / sqrt(fan_in)`` (with these BN statistics a random ResNet-101 stays finite and
    its features depend clearly on the image), relative-position tables ``0.2 N``. BN running means
    ``0.1 N``, running variances ``U(0.5, 1.5)``. Returns ``model``, filled in place.
    """
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.dim() == 1:
                base = 0.0 if name.endswith(".bias") else 1.0
                value = base + 0.1 * noise
            elif "rel_pos_table" in name:
                value = 0.2 * noise
            else:
                value = noise / math.sqrt(p[0].numel())
            p.copy_(value.to(p.dtype))
        for name in sorted(buffers):
            b = buffers[name]
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model
