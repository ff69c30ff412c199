"""Transformer layers of OFA (``models/ofa/unify_transformer_layer.py``; architecture.md 3.8, 4.4).

Pre-LN by default (every released model). With the NormFormer switches:

    x = x + drop_path(dropout(attn_ln(self_attn(self_attn_layer_norm(x)))))          [scale_attn]
    x = x + drop_path(dropout(cross_attn_ln(encoder_attn(encoder_attn_layer_norm(x)))))  (decoder)
    h = dropout(act(fc1(final_layer_norm(x)))); h = ffn_layernorm(h)                  [scale_fc]
    x = w_resid * x + drop_path(dropout(fc2(h)))                                      [scale_resids]

Module names equal the official checkpoint names. Tensors are batch-first ``[B, T, C]``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ofa.model.attention import MultiheadAttention, State
from ofa.model.onednn import Linear


class DropPath(nn.Module):
    """Per-sample stochastic depth: zero a sample's residual branch with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _activation(name: str):
    if name == "gelu":
        # fairseq computes GELU (exact erf form) in float32
        return lambda x: F.gelu(x.float()).type_as(x)
    if name == "relu":
        return F.relu
    raise ValueError(f"unsupported activation_fn {name!r}; choose gelu or relu")


class _FFN(nn.Module):
    """Shared FFN block; subclasses add the attention blocks."""

    def _init_ffn(self, cfg, embed_dim: int, ffn_dim: int, drop_path_rate: float):
        self.fc1 = Linear(embed_dim, ffn_dim)
        self.fc2 = Linear(ffn_dim, embed_dim)
        self.final_layer_norm = nn.LayerNorm(embed_dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim) if cfg.scale_fc else None
        self.w_resid = nn.Parameter(torch.ones(embed_dim)) if cfg.scale_resids else None
        self.activation = _activation(cfg.activation_fn)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)
        self.drop_path = DropPath(drop_path_rate)

    def _ffn_block(self, x: Tensor) -> Tensor:
        residual = x
        if self.normalize_before:
            x = self.final_layer_norm(x)
        x = self.activation_dropout(self.activation(self.fc1(x)))
        if self.ffn_layernorm is not None:
            x = self.ffn_layernorm(x)
        x = self.dropout(self.fc2(x))
        if self.w_resid is not None:
            residual = self.w_resid * residual
        x = residual + self.drop_path(x)
        if not self.normalize_before:
            x = self.final_layer_norm(x)
        return x


class EncoderLayer(_FFN):
    """Self-attention + FFN over ``[B, T, C]`` with a per-layer attention bias ``[B, H, T, T]``."""

    def __init__(self, cfg, drop_path_rate: float = 0.0):
        super().__init__()
        d = cfg.encoder_embed_dim
        self.self_attn = MultiheadAttention(
            d, cfg.encoder_attention_heads, cfg.attention_dropout, cfg.attn_scale_factor,
            cfg.scale_heads, cfg.attention_impl,
        )
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.attn_ln = nn.LayerNorm(d) if cfg.scale_attn else None
        self._init_ffn(cfg, d, cfg.encoder_ffn_embed_dim, drop_path_rate)
        self.normalize_before = cfg.encoder_normalize_before

    def forward(self, x: Tensor, padding_mask: Optional[Tensor], attn_bias: Tensor) -> Tensor:
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x = self.self_attn(x, key_padding_mask=padding_mask, attn_bias=attn_bias)
        if self.attn_ln is not None:
            x = self.attn_ln(x)
        x = residual + self.drop_path(self.dropout(x))
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)
        return self._ffn_block(x)


class DecoderLayer(_FFN):
    """Causal self-attention, cross-attention over the encoder, FFN."""

    def __init__(self, cfg, drop_path_rate: float = 0.0):
        super().__init__()
        d = cfg.decoder_embed_dim
        h = cfg.decoder_attention_heads
        self.self_attn = MultiheadAttention(
            d, h, cfg.attention_dropout, cfg.attn_scale_factor, cfg.scale_heads, cfg.attention_impl
        )
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_ln = nn.LayerNorm(d) if cfg.scale_attn else None
        self.encoder_attn = MultiheadAttention(
            d, h, cfg.attention_dropout, cfg.attn_scale_factor, cfg.scale_heads, cfg.attention_impl,
            encoder_decoder_attention=True,
        )
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_ln = nn.LayerNorm(d) if cfg.scale_attn else None
        self._init_ffn(cfg, d, cfg.decoder_ffn_embed_dim, drop_path_rate)
        self.normalize_before = cfg.decoder_normalize_before

    def forward(
        self,
        x: Tensor,
        encoder_out: Tensor,
        encoder_padding_mask: Optional[Tensor],
        self_attn_bias: Tensor,
        cross_attn_bias: Tensor,
        self_attn_mask: Optional[Tensor] = None,
        self_attn_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[State] = None,
    ) -> Tensor:
        """
        Args:
            x: ``[B, Tq, C]`` (``Tq = 1`` when decoding incrementally).
            encoder_out: ``[B, S, C]``; encoder_padding_mask ``[B, S]``.
            self_attn_bias: ``[B, H, Tq, Tk]``; cross_attn_bias ``[B, H, Tq, S]``.
            self_attn_mask: causal ``[Tq, Tk]`` (``None`` when incremental).
        """
        residual = x
        if self.normalize_before:
            x = self.self_attn_layer_norm(x)
        x = self.self_attn(x, key_padding_mask=self_attn_padding_mask, attn_bias=self_attn_bias,
                           attn_mask=self_attn_mask, incremental_state=incremental_state)
        if self.self_attn_ln is not None:
            x = self.self_attn_ln(x)
        x = residual + self.drop_path(self.dropout(x))
        if not self.normalize_before:
            x = self.self_attn_layer_norm(x)

        residual = x
        if self.normalize_before:
            x = self.encoder_attn_layer_norm(x)
        x = self.encoder_attn(x, encoder_out, key_padding_mask=encoder_padding_mask, attn_bias=cross_attn_bias,
                              incremental_state=incremental_state, static_kv=True)
        if self.cross_attn_ln is not None:
            x = self.cross_attn_ln(x)
        x = residual + self.drop_path(self.dropout(x))
        if not self.normalize_before:
            x = self.encoder_attn_layer_norm(x)
        return self._ffn_block(x)
