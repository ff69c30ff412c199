"""VQGAN-style discrete image tokenizer (the image-code side of OFA).

OFA turns images into discrete codes with the taming-transformers VQGAN "OpenImages f=8, 8192 codes,
Gumbel quantization": a 256x256 image becomes a 32x32 grid of codes in ``[0, 8192)`` (text-to-image
targets), the central 128x128 crop a 16x16 grid (image-infilling targets), and code ``c`` is the token
``<code_c>``. This module is an independent implementation of that architecture whose parameter names
follow the official checkpoint layout, so ``state_dict`` keys load 1:1 (see ``ofa.vqgan.convert``):

    encoder.conv_in                        3x3 conv, in_channels -> ch
    encoder.down.{i}.block.{j}             ResnetBlock (norm1, conv1, norm2, conv2[, nin_shortcut])
    encoder.down.{i}.attn.{j}              AttnBlock (norm, q, k, v, proj_out) at attention resolutions
    encoder.down.{i}.downsample.conv       stride-2 3x3 conv (levels 0 .. L-2)
    encoder.mid.{block_1, attn_1, block_2}
    encoder.norm_out, encoder.conv_out     -> z_channels
    quant_conv                             1x1 conv, z_channels -> embed_dim
    quantize.*                             the quantizer (gumbel: proj, embed; vq/ema: embedding)
    post_quant_conv                        1x1 conv, embed_dim -> z_channels
    decoder.conv_in, decoder.mid.*, decoder.up.{i}.block.{j} (num_res_blocks + 1 per level),
    decoder.up.{i}.attn.{j}, decoder.up.{i}.upsample.conv (levels 1 .. L-1), decoder.norm_out,
    decoder.conv_out

Level ``i`` works at ``resolution / 2**i`` pixels with ``ch * ch_mult[i]`` channels; the factor is
``f = 2**(len(ch_mult) - 1)``. Attention sits at the levels whose nominal resolution
(``config.resolution / 2**i``) is in ``attn_resolutions`` (the official rule; the network itself is
fully convolutional and accepts any input whose sides are multiples of ``f``).

Quantizers:

- ``gumbel`` (official OFA model): 1x1 ``proj`` to ``n_embed`` logits, code = argmax, vector =
  ``embed.weight[code]``; trained with straight-through Gumbel-softmax and a KL-to-uniform term.
  The official code samples Gumbel noise even at inference, so its codes vary from run to run
  (OFA issues #258, #301); ``encode`` here is deterministic (noise-free argmax) unless
  ``stochastic=True``.
- ``vq``: nearest codebook vector, straight-through gradient, loss
  ``||sg[z] - e||^2 + beta * ||z - sg[e]||^2``.
- ``ema``: nearest codebook vector with the codebook updated by exponential moving averages
  (no codebook gradient), loss ``beta * ||z - sg[e]||^2``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

QUANTIZERS = ("gumbel", "vq", "ema")


@dataclass
class VQGANConfig:
    """Architecture of a VQGAN. The defaults are the official OFA model (taming-transformers
    "VQGAN OpenImages (f=8), 8192, GumbelQuantization": ddconfig ch 128, ch_mult [1,1,2,4],
    num_res_blocks 2, attn_resolutions [32], resolution 256, z_channels 256, embed_dim 256,
    n_embed 8192, kl_weight 1e-8)."""

    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Tuple[int, ...] = (32,)
    resolution: int = 256            # nominal input side; only decides where attention sits
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 8192
    dropout: float = 0.0
    quantizer: str = "gumbel"        # gumbel | vq | ema
    beta: float = 0.25               # commitment weight (vq, ema)
    ema_decay: float = 0.99          # ema
    kl_weight: float = 1e-8          # gumbel KL-to-uniform weight (official value)
    temperature: float = 1.0         # gumbel softmax temperature during training
    norm_groups: int = 32            # GroupNorm groups (official 32; every channel count must divide)

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if not self.ch_mult or self.num_res_blocks < 1 or self.n_embed < 2:
            raise ValueError("need a non-empty ch_mult, num_res_blocks >= 1 and n_embed >= 2")
        chans = {self.ch * m for m in self.ch_mult} | {self.ch}
        bad = sorted(c for c in chans if c % self.norm_groups)
        if bad:
            raise ValueError(f"GroupNorm with {self.norm_groups} groups needs channel counts divisible by it; "
                             f"got {bad} (lower norm_groups or change ch/ch_mult)")
        if self.quantizer == "gumbel" and self.embed_dim != self.z_channels:
            # official GumbelVQ: quant_conv maps z_channels -> embed_dim but quantize.proj expects
            # z_channels inputs, so the two must be equal for the layout to work
            raise ValueError("the gumbel quantizer needs embed_dim == z_channels (official layout)")

    @property
    def factor(self) -> int:
        """Downsampling factor f: an HxW image gives an (H/f)x(W/f) grid of codes."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Dict) -> "VQGANConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown VQGAN config keys {unknown}")
        return cls(**d)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> 3x3 conv, twice, plus a (1x1-projected when the width changes) skip."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = self.nin_shortcut(x) if self.in_channels != self.out_channels else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all H*W positions with 1x1-conv q/k/v/out and a residual."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = _group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # [B, C, H, W] -> [B, 1, HW, C]; softmax(q k^T / sqrt(C)) v
        q, k, v = (t(y).flatten(2).transpose(1, 2).unsqueeze(1) for t in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv after zero padding only the right and bottom edges."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (AttnBlocks, maybe empty) and an
    optional ``downsample`` / ``upsample``."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """images [B, in_channels, H, W] -> features [B, z_channels, H/f, W/f]."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level, out = _Level(), cfg.ch * mult
            use_attn = (cfg.resolution // 2 ** i) in cfg.attn_resolutions
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(width, out, cfg.dropout, g))
                width = out
                if use_attn:
                    level.attn.append(AttnBlock(width, g))
            if i != n - 1:
                level.downsample = Downsample(width)
            self.down.append(level)
        self.mid = _Mid(width, cfg.dropout, g)
        self.norm_out = _group_norm(width, g)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """features [B, z_channels, h, w] -> images [B, out_ch, h*f, w*f] (unbounded; ~[-1, 1] once trained)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        width = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = _Mid(width, cfg.dropout, g)
        levels = [None] * n
        for i in reversed(range(n)):  # build deepest level first so widths chain like the forward pass
            level, out = _Level(), cfg.ch * cfg.ch_mult[i]
            use_attn = (cfg.resolution // 2 ** i) in cfg.attn_resolutions
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(width, out, cfg.dropout, g))
                width = out
                if use_attn:
                    level.attn.append(AttnBlock(width, g))
            if i != 0:
                level.upsample = Upsample(width)
            levels[i] = level
        self.up = nn.ModuleList(levels)  # up[0] is the full-resolution level, as in the official layout
        self.norm_out = _group_norm(width, g)
        self.conv_out = nn.Conv2d(width, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class QuantOutput(NamedTuple):
    z_q: torch.Tensor        # [B, embed_dim, h, w] quantized vectors (straight-through in training)
    loss: torch.Tensor       # scalar quantizer loss (codebook + commitment, or weighted KL)
    codes: torch.Tensor      # [B, h, w] int64


def _nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """z [B, D, h, w], codebook [K, D] -> index of the nearest (L2) codebook row per position, [B, h, w]."""
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None])
    return dist.argmin(1).view(b, h, w)


def _lookup(codebook: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """codes [B, h, w] -> vectors [B, D, h, w]."""
    return F.embedding(codes, codebook).permute(0, 3, 1, 2).contiguous()


def _restart_rows(dead: torch.Tensor, samples: torch.Tensor):
    """Indices of the ``dead`` [K] bool codes and a random row of ``samples`` [N, D] for each (empty
    when nothing is dead or there are no samples)."""
    idx = dead.nonzero().flatten()
    if len(idx) == 0 or len(samples) == 0:
        return idx[:0], samples[:0]
    return idx, samples[torch.randint(len(samples), (len(idx),), device=samples.device)]


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with a straight-through estimator (``vq``); key ``embedding.weight``."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, z: torch.Tensor) -> QuantOutput:
        codes = _nearest_codes(z.detach(), self.codebook)
        e = _lookup(self.codebook, codes)
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        z_q = z + (e - z).detach()  # value of e, gradient of identity w.r.t. z
        return QuantOutput(z_q, loss, codes)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return _lookup(self.codebook, codes)

    @torch.no_grad()
    def restart_codes(self, dead: torch.Tensor, samples: torch.Tensor) -> int:
        """Move the codes flagged in ``dead`` [K] bool onto random rows of ``samples`` [N, D]; returns how many."""
        idx, pick = _restart_rows(dead, samples)
        self.embedding.weight.data[idx] = pick.to(self.embedding.weight.dtype)
        return len(idx)


class _EMACodebook(nn.Module):
    """Codebook state of the ``ema`` quantizer: ``weight`` [K, D] (not trained by gradients),
    ``cluster_size`` [K] and ``embed_avg`` [K, D] running statistics."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_embed, embed_dim) / math.sqrt(embed_dim), requires_grad=False)
        self.register_buffer("cluster_size", torch.ones(n_embed))
        self.register_buffer("embed_avg", self.weight.data.clone())


class EMAVectorQuantizer(nn.Module):
    """Nearest-neighbour codebook updated by exponential moving averages of the assigned encoder
    outputs (van den Oord et al. 2017, appendix), with Laplace smoothing of the counts."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta, self.decay, self.eps = n_embed, embed_dim, beta, decay, eps
        self.embedding = _EMACodebook(n_embed, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, z: torch.Tensor) -> QuantOutput:
        codes = _nearest_codes(z.detach(), self.codebook)
        if self.training:
            self._ema_update(z.detach(), codes)
        e = _lookup(self.codebook, codes)
        loss = self.beta * F.mse_loss(z, e.detach())
        z_q = z + (e - z).detach()
        return QuantOutput(z_q, loss, codes)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.embed_dim).float()
        onehot = F.one_hot(codes.flatten(), self.n_embed).type_as(flat)
        cb = self.embedding
        cb.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        cb.embed_avg.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = cb.cluster_size.sum()
        smoothed = (cb.cluster_size + self.eps) / (n + self.n_embed * self.eps) * n
        cb.weight.data.copy_(cb.embed_avg / smoothed[:, None])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return _lookup(self.codebook, codes)

    @torch.no_grad()
    def restart_codes(self, dead: torch.Tensor, samples: torch.Tensor) -> int:
        """As ``VectorQuantizer.restart_codes``; the moved codes' running statistics restart too."""
        idx, pick = _restart_rows(dead, samples)
        pick = pick.float()
        cb = self.embedding
        cb.weight.data[idx] = pick
        cb.cluster_size[idx] = 1.0
        cb.embed_avg[idx] = pick
        return len(idx)


class GumbelQuantizer(nn.Module):
    """Gumbel-softmax quantizer of the official OFA VQGAN: keys ``proj.{weight,bias}`` (1x1 conv to
    ``n_embed`` logits) and ``embed.weight`` [n_embed, embed_dim]."""

    def __init__(self, in_channels: int, n_embed: int, embed_dim: int, kl_weight: float = 1e-8,
                 temperature: float = 1.0, straight_through: bool = True):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.kl_weight, self.temperature, self.straight_through = kl_weight, temperature, straight_through
        self.proj = nn.Conv2d(in_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embed.weight

    def forward(self, z: torch.Tensor, stochastic: Optional[bool] = None) -> QuantOutput:
        """Training (or ``stochastic=True``): Gumbel-softmax sample (hard one-hot with straight-through
        gradients when ``straight_through``); otherwise the noise-free argmax."""
        logits = self.proj(z)
        sample = self.training if stochastic is None else stochastic
        if sample:
            hard = self.straight_through or not self.training
            onehot = F.gumbel_softmax(logits, tau=self.temperature, dim=1, hard=hard)
            codes = onehot.argmax(1)
        else:
            codes = logits.argmax(1)
            onehot = F.one_hot(codes, self.n_embed).permute(0, 3, 1, 2).type_as(logits)
        z_q = torch.einsum("bkhw,kd->bdhw", onehot, self.embed.weight)
        logp = F.log_softmax(logits, dim=1)
        kl = (logp.exp() * (logp + math.log(self.n_embed))).sum(1).mean()  # KL(q || uniform)
        return QuantOutput(z_q, self.kl_weight * kl, codes)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return _lookup(self.codebook, codes)


def build_quantizer(cfg: VQGANConfig) -> nn.Module:
    if cfg.quantizer == "gumbel":
        return GumbelQuantizer(cfg.z_channels, cfg.n_embed, cfg.embed_dim, cfg.kl_weight, cfg.temperature)
    if cfg.quantizer == "vq":
        return VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
    return EMAVectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta, cfg.ema_decay)


def codebook_stats(codes: torch.Tensor, n_embed: int) -> Dict[str, float]:
    """Usage of a codebook by ``codes`` (any shape): ``perplexity`` = exp(entropy of the code
    histogram) in [1, n_embed], ``usage`` = fraction of codes used at least once, ``used`` = count."""
    counts = torch.bincount(codes.flatten().long(), minlength=n_embed).double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"perplexity": float(entropy.exp()), "usage": used / n_embed, "used": used}


class VQGAN(nn.Module):
    """Encoder -> quant_conv -> quantize -> post_quant_conv -> decoder.

    Images are float tensors in [-1, 1] (``2 * x - 1`` of [0, 1] pixels, as OFA's
    ``preprocess_vqgan``) with H and W multiples of ``config.factor``.
    """

    def __init__(self, config: Optional[VQGANConfig] = None):
        super().__init__()
        self.config = cfg = config or VQGANConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = build_quantizer(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def n_embed(self) -> int:
        return self.config.n_embed

    def _check_images(self, images: torch.Tensor) -> None:
        f = self.factor
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images [B, {self.config.in_channels}, H, W], got {tuple(images.shape)}")
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image sides must be multiples of the factor {f}, got {tuple(images.shape[2:])}")

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> pre-quantization latents [B, embed_dim, H/f, W/f]."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    def quantize_latent(self, h: torch.Tensor, **kwargs) -> QuantOutput:
        return self.quantize(h, **kwargs)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, stochastic: bool = False) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> codes LongTensor [B, H/f, W/f] in [0, n_embed).

        Deterministic (nearest code / noise-free Gumbel argmax); ``stochastic=True`` samples Gumbel
        codes like the official ``generate_code.py`` (gumbel quantizer only)."""
        h = self.encode_latent(images)
        if isinstance(self.quantize, GumbelQuantizer):
            return self.quantize(h, stochastic=stochastic).codes
        return _nearest_codes(h, self.quantize.codebook)

    def decode_latent(self, z_q: torch.Tensor) -> torch.Tensor:
        """quantized vectors [B, embed_dim, h, w] -> images [B, 3, h*f, w*f] (not clamped)."""
        return self.decoder(self.post_quant_conv(z_q))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """codes LongTensor [B, h, w] (or [B, h*w] for a square grid) -> images [B, 3, h*f, w*f] in [-1, 1]."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.post_quant_conv.weight.device)
        if codes.dim() == 2:
            side = math.isqrt(codes.shape[1])
            if side * side != codes.shape[1]:
                raise ValueError(f"{codes.shape[1]} codes per image do not form a square grid; pass [B, h, w]")
            codes = codes.view(codes.shape[0], side, side)
        if codes.dim() != 3:
            raise ValueError(f"expected codes [B, h, w], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_embed):
            raise ValueError(f"codes must lie in [0, {self.n_embed}), got [{int(codes.min())}, {int(codes.max())}]")
        out = self.decode_latent(self.quantize.lookup(codes))
        return out.clamp(-1, 1) if clamp else out

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """images [B, 3, H, W] in [-1, 1] -> (recon [B, 3, H, W] (unclamped), terms) with terms
        ``quant_loss`` (scalar; codebook + commitment for vq, commitment for ema, weighted KL for
        gumbel), ``rec_l1`` / ``rec_l2`` (scalar mean absolute / squared error against ``images``;
        all three differentiable) and ``codes`` [B, H/f, W/f]."""
        q = self.quantize_latent(self.encode_latent(images))
        recon = self.decode_latent(q.z_q)
        terms = {
            "quant_loss": q.loss,
            "rec_l1": (recon - images).abs().mean(),
            "rec_l2": (recon - images).pow(2).mean(),
            "codes": q.codes,
        }
        return recon, terms


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def attention_levels(cfg: VQGANConfig) -> Sequence[int]:
    """Indices of the levels that carry attention blocks."""
    return [i for i in range(len(cfg.ch_mult)) if (cfg.resolution // 2 ** i) in cfg.attn_resolutions]
