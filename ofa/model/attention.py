"""OFA multi-head attention: additive position bias, NormFormer head scales, key/value cache.

Mirrors ``models/ofa/unify_multihead_attention.py`` (architecture.md 3.7) but runs batch-first
and through ``torch.nn.functional.scaled_dot_product_attention``:

    logits = (q * (dh * scale_factor) ** -0.5) @ k^T + attn_bias + attn_mask, key padding -> -inf
    out    = out_proj(c_attn * softmax(logits) @ v)

The query is pre-scaled and SDPA is called with ``scale=1`` so the order of operations equals the
official one. ``attention_impl="math"`` computes the same thing with an explicit float32 softmax.

Incremental decoding keeps ``prev_key`` / ``prev_value`` ``[B, H, t, dh]`` per module inside
fairseq's ``incremental_state`` dict, so fairseq's own generators can drive this model too.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor, nn

from ofa.model.onednn import Linear

State = Dict[str, Dict[str, Optional[Tensor]]]

try:  # cuDNN's fused attention builds a new plan for every new key length, which makes step-by-step
    # decoding (the key length grows each step) several times slower; use the other fused kernels
    from torch.nn.attention import SDPBackend, sdpa_kernel

    _CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
except ImportError:  # pragma: no cover - older torch
    sdpa_kernel = None


_GROUP = "rows_per_key"  # cross-attention cache entry: consecutive query rows sharing each cached key row


def fold_rows(x: Tensor, group: int) -> Tensor:
    """``[N * group, A, T, D] -> [N, A, group * T, D]``: the ``group`` consecutive rows of each block become
    one longer query block (beam hypotheses of a sample attending to the sample's encoder keys)."""
    n, a, t, d = x.shape
    return x.view(n // group, group, a, t, d).transpose(1, 2).reshape(n // group, a, group * t, d)


def unfold_rows(x: Tensor, group: int) -> Tensor:
    """The inverse of ``fold_rows``: ``[N, A, group * T, D] -> [N * group, A, T, D]``."""
    n, a, gt, d = x.shape
    return x.view(n, a, group, gt // group, d).transpose(1, 2).reshape(n * group, a, gt // group, d)


_STORES = ("key_store", "value_store")  # self-attention cache: [N, H, capacity, dh]; prev_key/value view [:t]


def append_to_cache(buffer: Dict[str, Optional[Tensor]], k: Tensor, v: Tensor) -> Dict[str, Optional[Tensor]]:
    """A self-attention cache with ``k``, ``v`` ``[N, H, new, dh]`` appended after its ``prev_key`` /
    ``prev_value`` ``[N, H, t, dh]``.

    The keys live in a store with spare capacity (doubled when full) and ``prev_key`` is a view of its
    first ``t + new`` positions, so a step writes its keys in place instead of copying the whole cache
    (``torch.cat`` made decoding quadratic in the length: 1,024 image codes copied the cache 1,024
    times). A cache whose ``prev_key`` is not a view of its store (filled by hand, as the ONNX export
    does) or a traced graph takes the plain concatenation."""
    prev_k, prev_v = buffer.get("prev_key"), buffer.get("prev_value")
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        if prev_k is not None:
            k, v = torch.cat([prev_k, k], dim=2), torch.cat([prev_v, v], dim=2)
        return {"prev_key": k, "prev_value": v}
    t = 0 if prev_k is None else prev_k.size(2)
    stores = [buffer.get(name) for name in _STORES]
    usable = prev_k is not None and all(
        store is not None and store.size(0) == k.size(0) and store.data_ptr() == prev.data_ptr()
        for store, prev in zip(stores, (prev_k, prev_v)))
    if not usable or t + k.size(2) > stores[0].size(2):  # no store yet, or full: a new one, twice as large
        capacity = max(2 * (t + k.size(2)), 16)
        fresh = []
        for prev, new in ((prev_k, k), (prev_v, v)):
            store = new.new_empty(new.size(0), new.size(1), capacity, new.size(3))
            if t:
                store[:, :, :t] = prev
            fresh.append(store)
        stores = fresh
    end = t + k.size(2)
    for store, new in zip(stores, (k, v)):
        store[:, :, t:end] = new
    return {"prev_key": stores[0][:, :, :end], "prev_value": stores[1][:, :, :end],
            "key_store": stores[0], "value_store": stores[1]}


@with_incremental_state
class MultiheadAttention(nn.Module):
    """Multi-head attention over batch-first tensors.

    Args:
        embed_dim: model width ``C``.
        num_heads: heads ``H``; head width ``dh = C / H``.
        dropout: attention-probability dropout.
        scale_factor: attention temperature factor (2 in OFA: logits are divided by sqrt(2 dh)).
        scale_heads: NormFormer per-head output scale ``c_attn`` ``[H]``.
        impl: ``"sdpa"`` or ``"math"``.
        encoder_decoder_attention: marks cross-attention, whose cache needs no beam reordering.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, scale_factor: float = 2.0,
                 scale_heads: bool = False, impl: str = "sdpa", encoder_decoder_attention: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if impl not in ("sdpa", "math"):
            raise ValueError(f"attention_impl must be 'sdpa' or 'math', got {impl!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim * scale_factor) ** -0.5
        self.dropout = dropout
        self.impl = impl
        self.encoder_decoder_attention = encoder_decoder_attention
        self.q_proj = Linear(embed_dim, embed_dim)
        self.k_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.out_proj = Linear(embed_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None
        nn.init.xavier_uniform_(self.k_proj.weight, gain=2 ** -0.5)
        nn.init.xavier_uniform_(self.v_proj.weight, gain=2 ** -0.5)
        nn.init.xavier_uniform_(self.q_proj.weight, gain=2 ** -0.5)
        nn.init.xavier_uniform_(self.out_proj.weight)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.zeros_(lin.bias)

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, T, C] -> [B, H, T, dh]``"""
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key_value: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        attn_bias: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        incremental_state: Optional[State] = None,
        static_kv: bool = False,
    ) -> Tensor:
        """
        Args:
            query: ``[B, Tq, C]``.
            key_value: ``[B, Tk, C]`` for cross-attention; ``None`` for self-attention.
            key_padding_mask: bool ``[B, Tk]``, True at keys to ignore.
            attn_bias: float ``[B, H, Tq, Tk]`` added to the logits (position biases).
            attn_mask: float ``[Tq, Tk]`` added to the logits (causal mask, ``-inf`` above diagonal).
            incremental_state: fairseq cache dict; self-attention appends this step's keys,
                cross-attention (``static_kv``) projects the encoder output once and reuses it.

        Returns:
            ``[B, Tq, C]``.
        """
        q = self._heads(self.q_proj(query) * self.scaling)
        saved = self._get_input_buffer(incremental_state) if incremental_state is not None else None
        group = 1
        if saved is not None and static_kv and saved.get("prev_key") is not None:
            k, v = saved["prev_key"], saved["prev_value"]
            group = saved.get(_GROUP, 1)
            if group > 1 and q.size(0) != k.size(0) * group:
                raise ValueError(f"cross-attention cache holds {k.size(0)} rows for groups of {group} queries; "
                                 f"got {q.size(0)} queries")
        else:
            source = query if key_value is None else key_value
            k, v = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
            if incremental_state is not None and not static_kv:
                cache = append_to_cache(saved or {}, k, v)
                self._set_input_buffer(incremental_state, cache)
                k, v = cache["prev_key"], cache["prev_value"]
            elif incremental_state is not None:
                self._set_input_buffer(incremental_state, {"prev_key": k, "prev_value": v})

        mask = attn_bias
        if attn_mask is not None:
            mask = attn_mask if mask is None else mask + attn_mask
        if key_padding_mask is not None:
            pad = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            pad = pad.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
            mask = pad if mask is None else mask + pad
        if mask is not None:
            mask = mask.to(q.dtype)
        if group > 1:  # the beams of a sample share its keys: their queries become one longer query block
            rows, _, q_len, _ = q.shape
            q = fold_rows(q, group)
            if mask is not None:
                mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
                mask = fold_rows(mask.expand(rows, mask.size(1), q_len, mask.size(3)), group)
        p = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            ctx = sdpa_kernel(_CUDA_BACKENDS) if q.is_cuda and sdpa_kernel is not None else nullcontext()
            with ctx:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=1.0)
        else:
            logits = q @ k.transpose(-1, -2)
            if mask is not None:
                logits = logits + mask
            probs = F.dropout(logits.float().softmax(-1).type_as(q), p, self.training)
            out = probs @ v
        if group > 1:
            out = unfold_rows(out, group)
        if self.c_attn is not None:
            out = out * self.c_attn.view(1, -1, 1, 1)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.embed_dim))

    def _get_input_buffer(self, incremental_state: State) -> Dict[str, Optional[Tensor]]:
        result = self.get_incremental_state(incremental_state, "attn_state")
        return result if result is not None else {}

    def _set_input_buffer(self, incremental_state: State, buffer: Dict[str, Optional[Tensor]]):
        return self.set_incremental_state(incremental_state, "attn_state", buffer)

    def reorder_incremental_state(self, incremental_state: State, new_order: Tensor):
        """Reorder cached keys/values along the batch axis (beam search).

        Like fairseq, the cross-attention cache is left alone when its batch size already equals
        ``len(new_order)`` (its rows do not depend on the beam history).
        """
        buffer = self._get_input_buffer(incremental_state)
        if not buffer:
            return
        if self.encoder_decoder_attention and buffer.get("prev_key") is not None:
            group = buffer.get(_GROUP, 1)
            if buffer["prev_key"].size(0) * group == new_order.size(0):
                return  # every beam of a sample shares the same encoder rows
            # beam expansion or finished samples leaving: keep one row per run of new rows that share one
            keys, counts = torch.unique_consecutive(torch.div(new_order, group, rounding_mode="floor"),
                                                    return_counts=True)
            size = int(counts[0])
            if not bool((counts == size).all()):
                keys, size = torch.div(new_order, group, rounding_mode="floor"), 1
            for name in ("prev_key", "prev_value"):
                buffer[name] = buffer[name].index_select(0, keys)
            buffer[_GROUP] = size
            self._set_input_buffer(incremental_state, buffer)
            return
        if buffer.get("key_store") is not None and buffer.get("prev_key") is not None:
            # reorder the stores (spare capacity included) and view their filled part again
            t = buffer["prev_key"].size(2)
            for store, prev in zip(_STORES, ("prev_key", "prev_value")):
                buffer[store] = buffer[store].index_select(0, new_order)
                buffer[prev] = buffer[store][:, :, :t]
            self._set_input_buffer(incremental_state, buffer)
            return
        for name, value in list(buffer.items()):
            if value is None:
                continue
            buffer[name] = value.index_select(0, new_order)
        self._set_input_buffer(incremental_state, buffer)
