"""OFA decoder (architecture.md section 4).

Text samples use 1-D positions (``embed_positions``, ``pos_ln``, token relative buckets); image-code
samples (``code_masks[b]`` True, image generation / infilling) use the code grid positions
(``embed_image_positions[image_position_idx]``, ``image_pos_ln``, image relative buckets) and
``code_layernorm_embedding``. A batch may mix both kinds.

Position biases are computed from the full prefix ``prev_output_tokens`` even when decoding
incrementally (as the official decoder does); only the query rows of the positions not yet in the
cache are then used: one per step of beam search, or a whole forced prompt at once when the cache is
empty (the generator's prompt prefill). The cross-attention bias is absolute only:
``cross_pos_q_linear(LN(tgt_pos)) cross_pos_k_linear(P_enc)^T``.

``checkpoint_activations`` recomputes each layer in the backward pass (as in the encoder) when training without
a cache.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from fairseq.models import FairseqIncrementalDecoder
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ofa.model.attention import State
from ofa.model.layers import DecoderLayer
from ofa.model.onednn import Linear
from ofa.model.positions import code_position_ids, image_bucket_table, token_bucket_table


def _per_sample(mask: Optional[Tensor], when_true, when_false):
    """Select between two lazily computed per-sample results by a bool ``[B]`` mask."""
    if mask is None or not bool(mask.any()):
        return when_false()
    if bool(mask.all()):
        return when_true()
    a, b = when_true(), when_false()
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


class OFADecoder(FairseqIncrementalDecoder):
    def __init__(self, cfg, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.register_buffer("version", torch.Tensor([3]))
        self.cfg = cfg
        d = cfg.decoder_embed_dim
        self.num_heads = cfg.decoder_attention_heads
        self.padding_idx = embed_tokens.padding_idx
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if cfg.no_scale_embedding else d ** 0.5
        self.layernorm_embedding = nn.LayerNorm(d) if cfg.layernorm_embedding else None
        self.code_layernorm_embedding = nn.LayerNorm(d) if cfg.code_layernorm_embedding else None
        self.dropout = nn.Dropout(cfg.dropout)

        self.embed_positions = nn.Embedding(cfg.max_target_positions + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.image_bucket_size ** 2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.pos_scaling = float(d / self.num_heads * cfg.attn_scale_factor) ** -0.5
        self.self_pos_q_linear = Linear(d, d)
        self.self_pos_k_linear = Linear(d, d)
        self.cross_pos_q_linear = Linear(d, d)
        self.cross_pos_k_linear = Linear(d, d)

        rates = torch.linspace(0, cfg.decoder_drop_path_rate, cfg.decoder_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([DecoderLayer(cfg, rates[i]) for i in range(cfg.decoder_layers)])
        self.layer_norm = nn.LayerNorm(d) if cfg.decoder_normalize_before else None

        self.output_projection = Linear(d, len(dictionary), bias=False)
        if cfg.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight

        num_token_rel = 2 * cfg.token_bucket_size - 1
        num_image_rel = (2 * cfg.image_bucket_size - 1) ** 2 + 3
        self.token_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_token_rel, self.num_heads) for _ in range(cfg.decoder_layers)]
        )
        self.image_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_image_rel, self.num_heads) for _ in range(cfg.decoder_layers)]
        )
        self.register_buffer("token_rp_bucket", token_bucket_table(cfg.token_bucket_size))
        self.register_buffer("image_rp_bucket", image_bucket_table(cfg.image_bucket_size))
        self.register_buffer("image_position_idx", code_position_ids(cfg.code_image_size, cfg.image_bucket_size))

    # ------------------------------------------------------------------ positions
    def _positions(self, tgt_len: int, bsz: int, code_masks: Optional[Tensor], device) -> Tuple[Tensor, Tensor]:
        """Raw and LayerNorm'd target position embeddings, each ``[1, Lt, C]`` when every sample is of one
        kind (the position terms are then computed once for the batch) or ``[B, Lt, C]`` when text and
        code samples are mixed."""
        text = self.embed_positions(torch.arange(tgt_len, device=device))[None]

        def image():
            ids = self.image_position_idx[:tgt_len]
            return self.embed_image_positions(ids)[None]

        raw = _per_sample(code_masks, image, lambda: text)
        normed = _per_sample(code_masks, lambda: self.image_pos_ln(raw), lambda: self.pos_ln(raw))
        return raw, normed

    def _rel_bias(self, idx: int, tgt_len: int, code_masks: Optional[Tensor], q_len: Optional[int] = None) -> Tensor:
        """Relative self-attention bias ``[B or 1, H, q_len, Lt]`` for layer ``idx``: the rows of the last
        ``q_len`` query positions (default all ``Lt``; incremental decoding needs only the newest row, and
        building all ``Lt x Lt`` at every step made each step quadratic in the length)."""
        first = tgt_len - (tgt_len if q_len is None else q_len)

        def text():
            buckets = self.token_rp_bucket[first:tgt_len, :tgt_len]
            return self.token_rel_pos_table_list[idx].weight[buckets].permute(2, 0, 1)[None]

        def image():
            ids = self.image_position_idx[:tgt_len]
            buckets = self.image_rp_bucket[ids[first:, None], ids[None, :]]
            return self.image_rel_pos_table_list[idx].weight[buckets].permute(2, 0, 1)[None]

        return _per_sample(code_masks, image, text)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        prev_output_tokens: Tensor,
        code_masks: Optional[Tensor] = None,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[State] = None,
        features_only: bool = False,
        **unused,
    ) -> Tuple[Tensor, Dict[str, Any]]:
        """
        Args:
            prev_output_tokens: ``[B, Lt]`` starting with BOS (the whole prefix, also when
                decoding incrementally).
            code_masks: bool ``[B]``, True for image-code samples.
            encoder_out: the encoder's output dict.
            incremental_state: fairseq cache dict; when given, only the positions not yet in the cache
                are computed (the last one when the cache holds ``Lt - 1``, as fairseq's generators
                call it; all ``Lt`` when it is empty) and added to it.

        Returns:
            ``(logits [B, Lt or new positions, V], {"attn": [None], "inner_states": [...]})``.
        """
        x, extra = self.extract_features(prev_output_tokens, code_masks, encoder_out, incremental_state)
        if not features_only:
            x = self.output_projection(x)
        return x, extra

    def extract_features(self, prev_output_tokens, code_masks=None, encoder_out=None, incremental_state=None,
                         **unused):
        bsz, tgt_len = prev_output_tokens.shape
        device = prev_output_tokens.device
        if code_masks is not None:
            code_masks = code_masks.bool()
            if code_masks.numel() == 1 and bsz > 1:
                code_masks = code_masks.expand(bsz)
        raw_pos, pos = self._positions(tgt_len, bsz, code_masks, device)
        enc = encoder_out["encoder_out"][0].transpose(0, 1)  # B x S x C
        enc_padding = encoder_out["encoder_padding_mask"][0] if encoder_out["encoder_padding_mask"] else None
        if enc_padding is not None and not bool(enc_padding.any()):
            enc_padding = None
        src_pos = encoder_out["position_embeddings"][0]
        if src_pos.size(0) > 1 and src_pos.stride(0) == 0:
            src_pos = src_pos[:1]  # the encoder's shared positions (a broadcast view): compute their keys once

        incremental = incremental_state is not None
        cached = self._cached_len(incremental_state) if incremental else 0
        if cached >= tgt_len:
            raise ValueError(f"the decoder cache already holds {cached} positions; prev_output_tokens has {tgt_len}")
        pos_q = pos[:, cached:]
        q_len = pos_q.size(1)
        h = self.num_heads

        def split(t: Tensor) -> Tensor:
            return t.view(t.size(0), t.size(1), h, -1).transpose(1, 2)

        self_abs = split(self.self_pos_q_linear(pos_q)) * self.pos_scaling @ self._self_pos_k(pos, cached,
                                                                                             incremental_state)
        cross_abs = split(self.cross_pos_q_linear(pos_q)) * self.pos_scaling @ self._cross_pos_k(src_pos, incremental_state)

        tokens = prev_output_tokens[:, cached:]
        x = self.embed_scale * self.embed_tokens(tokens)
        if not self.cfg.disable_entangle:  # official quirk: raw positions are added unless disabled
            x = x + raw_pos[:, cached:]
        if self.layernorm_embedding is not None:
            code_ln = self.code_layernorm_embedding
            if code_ln is None:
                x = self.layernorm_embedding(x)
            else:
                x = _per_sample(code_masks, lambda: code_ln(x), lambda: self.layernorm_embedding(x))
        x = self.dropout(x)

        # pads only occur in teacher-forced batches; generated prefixes never hold pad tokens
        self_padding = None
        if not incremental and tokens.eq(self.padding_idx).any():
            self_padding = tokens.eq(self.padding_idx)
        causal = None
        if q_len > 1:  # query row i is position cached + i: it sees keys 0 .. cached + i
            causal = torch.triu(torch.full((q_len, tgt_len), float("-inf"), device=device), cached + 1).to(x.dtype)

        inner_states = [x]
        # activation checkpointing in training only: never with a decoding cache (its keys are state to keep)
        recompute = (getattr(self.cfg, "checkpoint_activations", False) and self.training and not incremental
                     and torch.is_grad_enabled())
        for idx in range(len(self.layers)):
            args = (idx, x, enc, enc_padding, self_abs, cross_abs, causal, self_padding, tgt_len, code_masks, q_len)
            x = checkpoint(self._layer, *args, None, use_reentrant=False) if recompute else \
                self._layer(*args, incremental_state)
            inner_states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x, {"attn": [None], "inner_states": inner_states}

    def _layer(self, idx: int, x: Tensor, enc: Tensor, enc_padding: Optional[Tensor], self_abs: Tensor,
               cross_abs: Tensor, causal: Optional[Tensor], self_padding: Optional[Tensor], tgt_len: int,
               code_masks: Optional[Tensor], q_len: int, incremental_state: Optional[State]) -> Tensor:
        """Layer ``idx`` on ``x [B, q_len, C]`` with its relative self-attention bias built inside (so that activation
        checkpointing, which calls it without a cache, recomputes the bias too) -> ``[B, q_len, C]``."""
        self_bias = self_abs + self._rel_bias(idx, tgt_len, code_masks, q_len)
        return self.layers[idx](x, enc, enc_padding, self_bias, cross_abs, causal, self_padding, incremental_state)

    def _pos_keys(self, linear: nn.Linear, pos: Tensor) -> Tensor:
        """Position embeddings ``[B, L, C]`` -> per-head keys ``[B, H, C/H, L]`` (transposed for ``q @ k``)."""
        b, length, _ = pos.shape
        return linear(pos).view(b, length, self.num_heads, -1).permute(0, 2, 3, 1)

    def _cached_len(self, incremental_state: State) -> int:
        """Target positions the cache already holds (0 before the first call)."""
        saved = self.get_incremental_state(incremental_state, "self_pos_k")
        return 0 if saved is None else int(saved["k"].size(-1))

    def _self_pos_k(self, pos: Tensor, cached: int, incremental_state: Optional[State]) -> Tensor:
        """Keys of the target positions for the self-attention position bias, ``[B, H, C/H, t]``.

        Incremental decoding keeps the keys of the ``cached`` earlier positions in the cache and adds only
        the new ones' (recomputing all ``t`` cost ``t x C^2`` per row and step: quadratic in the length,
        which matters for the 1,024 codes of an image).
        """
        if cached:
            saved = self.get_incremental_state(incremental_state, "self_pos_k")
            k = torch.cat([saved["k"], self._pos_keys(self.self_pos_k_linear, pos[:, cached:])], dim=-1)
        else:
            k = self._pos_keys(self.self_pos_k_linear, pos)
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "self_pos_k", {"k": k})
        return k

    def _cross_pos_k(self, src_pos: Tensor, incremental_state: Optional[State]) -> Tensor:
        """Keys of the source positions for the cross-attention position bias: ``src_pos [B, S, C]`` ->
        ``[B, H, C/H, S]`` (transposed for the ``q @ k`` product).

        They depend on the source alone, so incremental decoding computes them at the first step and keeps
        them in the cache (reordered with it) instead of spending ``S x C^2`` per row at every step
        (ofa_base, 384 px, beam 5, 20 tokens: 4.07 -> 3.60 s on the 2-core CPU, ``bench/bench_model.py``).
        """
        saved = self.get_incremental_state(incremental_state, "cross_pos_k") if incremental_state is not None else None
        if saved is not None:
            return saved["k"]
        k = self._pos_keys(self.cross_pos_k_linear, src_pos)
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "cross_pos_k", {"k": k})
        return k

    def reorder_incremental_state(self, incremental_state: State, new_order: Tensor):
        """Reorder the cached position keys with the beams (the attention caches reorder themselves); keys
        shared by every row (batch size 1) broadcast and stay as they are."""
        for name in ("self_pos_k", "cross_pos_k"):
            saved = self.get_incremental_state(incremental_state, name)
            if saved is not None and saved["k"].size(0) > 1:
                self.set_incremental_state(incremental_state, name, {"k": saved["k"].index_select(0, new_order)})

    def output_layer(self, features: Tensor) -> Tensor:
        return self.output_projection(features)

    def max_positions(self) -> int:
        return self.cfg.max_target_positions

    def upgrade_state_dict_named(self, state_dict, name):
        return state_dict
