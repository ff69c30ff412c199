"""The two graphs an ONNX export holds, as ``nn.Module`` wrappers over a loaded ``OFAModel``.

``EncoderGraph``: ``(src_tokens [B, L] int64, patch_images [B, 3, S, S] float32, patch_masks [B] bool)`` ->
    - ``encoder_out`` ``[B, T, C]`` (``T = N + L``: image patches first, then text),
    - ``encoder_padding_mask`` bool ``[B, T]`` (True at pads),
    - ``cross_pos_k`` ``[B, H, dh, T]``: the keys of the decoder's cross-attention position bias
      (``cross_pos_k_linear`` of the encoder's LayerNorm'd positions, transposed for ``q @ k``),
    - ``cross_k_{i}``, ``cross_v_{i}`` ``[B, H, T, dh]`` for every decoder layer ``i``: the cross-attention
      cache, fixed for the whole decoding.
    ``patch_masks`` False marks a text-only sample: its (dummy) image is key-padded and zeroed as in the
    model; in the graph it goes through the ResNet with the others (the outputs are the same).

``DecoderStepGraph``: one decoding step of text for every row ``n`` of the beam batch ``[N]``:
    inputs ``tokens`` ``[N, 1]`` (the last token of each row; BOS at the first step),
    ``encoder_padding_mask`` ``[N, T]``, ``cross_pos_k``, ``cross_k_{i}``, ``cross_v_{i}`` (as above, one
    row per hypothesis) and ``past_k_{i}``, ``past_v_{i}`` ``[N, H, t, dh]`` (``t`` = positions decoded so
    far, 0 at the first step); outputs ``logits`` ``[N, V]`` (float32, before any constraint or
    softmax) and ``present_k_{i}``, ``present_v_{i}`` ``[N, H, t + 1, dh]``.

The step's position is ``t``, read from the cache's length, so the graph computes the target position
terms and the relative-position bias row of step ``t`` itself (the relative bias of text: bucket row ``t``
of the token table, one row per layer). Text decoding only: image-code generation (``code_masks``) is not
exported. Both call the model's own layers, so the numbers are the PyTorch model's.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn


def _layer_names(prefix: str, n: int) -> List[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(n) for kind in ("k", "v")]


def cache_names(num_layers: int) -> Tuple[List[str], List[str], List[str]]:
    """``(cross, past, present)`` input/output names, layer-major: ``cross_k_0, cross_v_0, cross_k_1, ...``."""
    return _layer_names("cross", num_layers), _layer_names("past", num_layers), _layer_names("present", num_layers)


class EncoderGraph(nn.Module):
    """The encoder plus everything of the decoder that depends on the source only (see the module docstring)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.train(model.training)  # a new module starts in training mode; exporters restore it (and the model's)

    def forward(self, src_tokens: Tensor, patch_images: Tensor, patch_masks: Tensor):
        encoder, decoder = self.model.encoder, self.model.decoder
        out = encoder(src_tokens, patch_images=patch_images, patch_masks=patch_masks)
        enc = out["encoder_out"][0].transpose(0, 1)  # [B, T, C]
        padding = out["encoder_padding_mask"][0]
        pos = out["position_embeddings"][0]  # [B, T, C]
        cross_pos_k = decoder._pos_keys(decoder.cross_pos_k_linear, pos)
        cache = []
        for layer in decoder.layers:
            attn = layer.encoder_attn
            cache += [attn._heads(attn.k_proj(enc)), attn._heads(attn.v_proj(enc))]
        return (enc, padding, cross_pos_k, *cache)


class DecoderStepGraph(nn.Module):
    """One incremental text-decoding step with the caches as explicit inputs and outputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.train(model.training)  # a new module starts in training mode; exporters restore it (and the model's)

    def forward(self, tokens: Tensor, encoder_padding_mask: Tensor, cross_pos_k: Tensor, *caches: Tensor):
        decoder = self.model.decoder
        n_layers = len(decoder.layers)
        cross, past = caches[: 2 * n_layers], caches[2 * n_layers:]
        h = decoder.num_heads
        t = past[0].shape[2]  # positions already decoded: this step is position t

        raw_pos = decoder.embed_positions.weight[: t + 1][None]  # [1, t + 1, C] (positions 0 .. t)
        pos = decoder.pos_ln(raw_pos)
        pos_q = pos[:, t:]  # [1, 1, C]

        def query(linear: nn.Linear) -> Tensor:  # [1, 1, C] -> [1, H, 1, dh], scaled as the decoder does
            return linear(pos_q).view(1, 1, h, -1).transpose(1, 2) * decoder.pos_scaling

        self_abs = query(decoder.self_pos_q_linear) @ decoder._pos_keys(decoder.self_pos_k_linear, pos)  # [1, H, 1, t + 1]
        cross_abs = query(decoder.cross_pos_q_linear) @ cross_pos_k  # [N, H, 1, T]

        x = decoder.embed_scale * decoder.embed_tokens(tokens)  # [N, 1, C]
        if not decoder.cfg.disable_entangle:
            x = x + raw_pos[:, t:]
        if decoder.layernorm_embedding is not None:
            x = decoder.layernorm_embedding(x)

        presents = []
        for idx, layer in enumerate(decoder.layers):
            rel = decoder._rel_bias(idx, t + 1, None, q_len=1)  # the text bias row of position t: [1, H, 1, t + 1]
            state = {}
            layer.self_attn._set_input_buffer(state, {"prev_key": past[2 * idx], "prev_value": past[2 * idx + 1]})
            layer.encoder_attn._set_input_buffer(state, {"prev_key": cross[2 * idx], "prev_value": cross[2 * idx + 1]})
            x = layer(x, None, encoder_padding_mask, self_abs + rel, cross_abs, None, None, state)
            saved = layer.self_attn._get_input_buffer(state)
            presents += [saved["prev_key"], saved["prev_value"]]
        if decoder.layer_norm is not None:
            x = decoder.layer_norm(x)
        logits = decoder.output_projection(x)[:, 0].float()
        return (logits, *presents)


def use_math_attention(model) -> List[Tuple[nn.Module, str]]:
    """Switch every attention module of ``model`` to the explicit-softmax path (``impl="math"``: plain
    MatMul/Softmax ops in the exported graph, the same numbers in float32); returns what to restore."""
    from ofa.model.attention import MultiheadAttention

    saved = []
    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            saved.append((module, module.impl))
            module.impl = "math"
    return saved


def restore_attention(saved: List[Tuple[nn.Module, str]]) -> None:
    for module, impl in saved:
        module.impl = impl


@torch.no_grad()
def example_inputs(model, batch: int = 2, src_len: int = 7, image_size: int = 64, past_len: int = 3):
    """Inputs to trace the graphs with: a padded text batch (so that the padding path is what the graph
    holds), ``image_size`` images, and a decoder cache of ``past_len`` positions."""
    cfg = model.cfg
    pad = model.encoder.padding_idx
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 20, (batch, src_len), generator=g)
    src[:, 0] = 0
    src[:, -1] = 2
    if batch > 1:
        src[-1, -2:] = pad  # right padding in the last row
        src[-1, -3] = 2
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    masks = torch.ones(batch, dtype=torch.bool)  # all real: the traced graph runs every image through the ResNet
    enc = EncoderGraph(model)(src, images, masks)
    h, dh = cfg.decoder_attention_heads, cfg.decoder_embed_dim // cfg.decoder_attention_heads
    past = [torch.randn(batch, h, past_len, dh, generator=g) for _ in range(2 * cfg.decoder_layers)]
    tokens = torch.randint(4, 20, (batch, 1), generator=g)
    return (src, images, masks), (tokens, enc[1], enc[2], *enc[3:], *past)
