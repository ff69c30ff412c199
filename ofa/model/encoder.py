"""OFA encoder: image patches and text in one sequence (architecture.md section 3).

Sequence layout is ``[image patches ; text tokens]`` (image first). Attention logits get
- an absolute position bias computed once per forward from LayerNorm'd position embeddings
  (``pos_q_linear(P) pos_k_linear(P)^T / sqrt(2 dh)``), shared by all layers, and
- per-layer relative biases: 1-D buckets on the text block, 2-D buckets on the image block; the
  image<->text blocks get only the absolute bias.

Samples without an image (``patch_masks`` False) still carry a dummy image whose patches are all
key-padded and zeroed. In a batch that also holds real images the dummies do not go through the
backbone (their features are zeros): the outputs are the same, but in training they no longer enter
the ResNet's BatchNorm batch statistics (the official code runs them; half of a pretraining ``v2``
batch without image infilling is text, so half of those statistics came from blank images).

With ``checkpoint_activations`` each layer runs under ``torch.utils.checkpoint`` (``use_reentrant=False``,
which restores the RNG state, so dropout draws the same masks) in training: its activations are recomputed in
the backward pass instead of kept.
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq.models import FairseqEncoder
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ofa.model.layers import EncoderLayer
from ofa.model.onednn import Linear
from ofa.model.positions import image_bucket_table, patch_position_ids, token_bucket_table
from ofa.model.resnet import build_image_backbone


class OFAEncoder(FairseqEncoder):
    """Args:
        cfg: ``OFAModelConfig``.
        dictionary: the fairseq ``Dictionary`` (source == target in OFA).
        embed_tokens: the shared token embedding ``[V, C]``.
    """

    def __init__(self, cfg, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        self.register_buffer("version", torch.Tensor([3]))
        self.cfg = cfg
        d = cfg.encoder_embed_dim
        self.padding_idx = embed_tokens.padding_idx
        self.num_heads = cfg.encoder_attention_heads
        self.image_bucket_size = cfg.image_bucket_size
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if cfg.no_scale_embedding else d ** 0.5
        self.layernorm_embedding = nn.LayerNorm(d) if cfg.layernorm_embedding else None
        self.type_embedding = nn.Embedding(2, d) if cfg.add_type_embedding else None
        self.embed_images = build_image_backbone(cfg.resnet_type, cfg.resnet_drop_path_rate, cfg.freeze_resnet)
        self.image_proj = Linear(self.embed_images.out_channels, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d) if cfg.patch_layernorm_embedding else None
        self.dropout = nn.Dropout(cfg.dropout)

        self.embed_positions = nn.Embedding(cfg.max_source_positions + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.image_bucket_size ** 2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.pos_scaling = float(d / cfg.encoder_attention_heads * cfg.attn_scale_factor) ** -0.5
        self.pos_q_linear = Linear(d, d)
        self.pos_k_linear = Linear(d, d)

        rates = torch.linspace(0, cfg.encoder_drop_path_rate, cfg.encoder_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([EncoderLayer(cfg, rates[i]) for i in range(cfg.encoder_layers)])
        self.layer_norm = nn.LayerNorm(d) if cfg.encoder_normalize_before else None

        num_token_rel = 2 * cfg.token_bucket_size - 1
        num_image_rel = (2 * cfg.image_bucket_size - 1) ** 2 + 3
        self.token_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_token_rel, self.num_heads) for _ in range(cfg.encoder_layers)]
        )
        self.image_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(num_image_rel, self.num_heads) for _ in range(cfg.encoder_layers)]
        )
        self.register_buffer("token_rp_bucket", token_bucket_table(cfg.token_bucket_size))
        self.register_buffer("image_rp_bucket", image_bucket_table(cfg.image_bucket_size))

    # ------------------------------------------------------------------ image path
    def embed_patches(self, patch_images: Tensor, sample_patch_num: Optional[int] = None,
                      patch_masks: Optional[Tensor] = None):
        """Run the backbone and flatten its grid.

        Args:
            patch_images: ``[B, 3, S, S]`` normalised to ``[-1, 1]``.
            sample_patch_num: keep this many randomly chosen patches per sample (training only).
            patch_masks: bool ``[B]``, False for dummy images: when some are real, only those go through
                the backbone and the dummies get zero features (see the module docstring).

        Returns:
            ``(features [B, N, C_img], position_ids [1, N])``: one row shared by the batch (every image
            of a batch has the same grid), or ``[B, N]`` when patches are sampled per sample.
        """
        real = None if patch_masks is None else patch_masks.bool()
        if real is not None and bool(real.any()) and not bool(real.all()):
            part = self.embed_images(patch_images[real])
            feats = part.new_zeros((patch_images.size(0), *part.shape[1:]))
            feats[real] = part
        else:
            feats = self.embed_images(patch_images)
        b, _, h, w = feats.shape
        feats = feats.flatten(2).transpose(1, 2)
        pos_ids = patch_position_ids(h, w, self.image_bucket_size).to(feats.device)[None]
        if sample_patch_num is not None and sample_patch_num < h * w:
            order = torch.tensor(
                [random.sample(range(h * w), k=sample_patch_num) for _ in range(b)], device=feats.device
            )
            feats = feats.gather(1, order[:, :, None].expand(-1, -1, feats.size(2)))
            pos_ids = pos_ids.expand(b, -1).gather(1, order)
        return feats, pos_ids

    def _rel_bias(self, idx: int, token_buckets: Tensor, image_buckets: Optional[Tensor], num_patches: int) -> Tensor:
        """Relative-position bias of layer ``idx`` over the whole sequence, ``[b, H, T, T]``.

        ``b`` is 1 when every sample shares the patch grid (the table lookups are then done once for
        the batch, not once per sample) and ``B`` with per-sample patch sampling. The image block gets
        the 2-D buckets, the text block the 1-D buckets, the image<->text blocks zero.
        """
        text = self.token_rel_pos_table_list[idx].weight[token_buckets].permute(2, 0, 1)[None]  # [1, H, L, L]
        if image_buckets is None:
            return text
        image = self.image_rel_pos_table_list[idx].weight[image_buckets].permute(0, 3, 1, 2)  # [b, H, N, N]
        text = text.expand(image.size(0), -1, -1, -1)
        top = F.pad(image, (0, text.size(-1)))  # [b, H, N, T]
        bottom = F.pad(text, (num_patches, 0))  # [b, H, L, T]
        return torch.cat([top, bottom], dim=2)

    def _layer(self, idx: int, x: Tensor, abs_bias: Tensor, token_buckets: Tensor, image_buckets: Optional[Tensor],
               num_patches: int) -> Tensor:
        """Layer ``idx`` on ``x [B, T, C]`` with its attention bias (``abs_bias [b, H, T, T]`` + its relative one)."""
        bias = abs_bias + self._rel_bias(idx, token_buckets, image_buckets, num_patches)
        return self.layers[idx](x, None, bias)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor] = None,
        patch_images: Optional[Tensor] = None,
        patch_masks: Optional[Tensor] = None,
        code_masks: Optional[Tensor] = None,
        return_all_hiddens: bool = False,
        sample_patch_num: Optional[int] = None,
        **unused,
    ) -> Dict[str, List[Tensor]]:
        """
        Args:
            src_tokens: ``[B, L]`` right-padded text ids (``[bos] + prompt + [eos]``).
            src_lengths: ``[B]`` (unused; kept for the fairseq signature).
            patch_images: ``[B, 3, S, S]`` or ``None`` for a text-only batch.
            patch_masks: bool ``[B]``, False where the sample has no real image.
            sample_patch_num: training-time patch subsampling (pretraining).

        Returns:
            fairseq encoder-out dict: ``encoder_out`` ``[[T, B, C]]`` with ``T = N + L``,
            ``encoder_padding_mask`` ``[[B, T]]``, ``position_embeddings`` ``[[B, T, C]]`` (the
            LayerNorm'd absolute positions the decoder's cross-attention bias is built from),
            ``encoder_states`` (per-layer ``[T, B, C]`` when ``return_all_hiddens``).
        """
        bsz, text_len = src_tokens.shape
        x = self.embed_scale * self.embed_tokens(src_tokens)
        text_pos = self.embed_positions(torch.arange(text_len, device=src_tokens.device))[None]  # [1, L, C]
        if self.cfg.entangle_position_embedding:
            x = x + text_pos
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout(x)
        padding_mask = src_tokens.eq(self.padding_idx)
        pos = self.pos_ln(text_pos)  # [1, L, C]: positions, hence their biases, are shared unless sampled

        num_patches = 0
        image_pos_ids = None
        if patch_images is not None:
            feats, image_pos_ids = self.embed_patches(patch_images, sample_patch_num, patch_masks)
            num_patches = feats.size(1)
            img = self.embed_scale * self.image_proj(feats)
            image_pos = self.embed_image_positions(image_pos_ids)  # [1 or B, N, C]
            if self.cfg.entangle_position_embedding:
                img = img + image_pos
            if self.type_embedding is not None:
                img = img + self.type_embedding.weight[1]
            if self.patch_layernorm_embedding is not None:
                img = self.patch_layernorm_embedding(img)
            img = self.dropout(img)
            image_padding = torch.zeros(bsz, num_patches, dtype=torch.bool, device=x.device)
            if patch_masks is not None:
                image_padding = image_padding | ~patch_masks.bool()[:, None]
            x = torch.cat([img, x], dim=1)
            padding_mask = torch.cat([image_padding, padding_mask], dim=1)
            image_pos = self.image_pos_ln(image_pos)
            pos = torch.cat([image_pos, pos.expand(image_pos.size(0), -1, -1)], dim=1)

        has_pads = bool(padding_mask.any())
        if has_pads:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))

        # absolute position bias [b, H, T, T] (b = 1 unless patches are sampled), shared by every layer;
        # key padding is folded in once here (-inf columns) instead of in every layer
        t = x.size(1)
        pb = pos.size(0)
        q = self.pos_q_linear(pos).view(pb, t, self.num_heads, -1).transpose(1, 2) * self.pos_scaling
        k = self.pos_k_linear(pos).view(pb, t, self.num_heads, -1).transpose(1, 2)
        abs_bias = q @ k.transpose(2, 3)
        if has_pads:
            pad = torch.zeros(padding_mask.shape, dtype=abs_bias.dtype, device=abs_bias.device)
            abs_bias = abs_bias + pad.masked_fill(padding_mask, float("-inf"))[:, None, None, :]

        token_buckets = self.token_rp_bucket[:text_len, :text_len]
        image_buckets = None
        if image_pos_ids is not None:
            image_buckets = self.image_rp_bucket[image_pos_ids[:, :, None], image_pos_ids[:, None, :]]

        states = [x.transpose(0, 1)] if return_all_hiddens else []
        recompute = getattr(self.cfg, "checkpoint_activations", False) and self.training and torch.is_grad_enabled()
        for idx in range(len(self.layers)):
            args = (idx, x, abs_bias, token_buckets, image_buckets, num_patches)
            # with recompute, keep only the layer's input; rebuild the rest (bias included) in the backward pass
            x = checkpoint(self._layer, *args, use_reentrant=False) if recompute else self._layer(*args)
            if return_all_hiddens:
                states.append(x.transpose(0, 1))

        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {
            "encoder_out": [x.transpose(0, 1)],  # T x B x C
            "encoder_padding_mask": [padding_mask],  # B x T
            "encoder_embedding": [],
            "encoder_states": states,
            "src_tokens": [],
            "src_lengths": [],
            "position_embeddings": [pos.expand(bsz, -1, -1)],  # B x T x C (a broadcast view when shared)
        }

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        """Select / repeat batch rows (beam expansion and finished-sentence pruning)."""
        def pick(key, dim):
            return [v.index_select(dim, new_order) for v in encoder_out[key]]

        return {
            "encoder_out": pick("encoder_out", 1),
            "encoder_padding_mask": pick("encoder_padding_mask", 0),
            "encoder_embedding": pick("encoder_embedding", 0),
            "encoder_states": pick("encoder_states", 1),
            "src_tokens": pick("src_tokens", 0),
            "src_lengths": pick("src_lengths", 0),
            "position_embeddings": pick("position_embeddings", 0),
        }

    def max_positions(self) -> int:
        return self.cfg.max_source_positions

    def upgrade_state_dict_named(self, state_dict, name):
        return state_dict
