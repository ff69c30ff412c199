"""Train a (small) VQGAN tokenizer on an image folder or official TSV shards.

Objective per step (images x in [-1, 1], reconstruction r)::

    loss = l1_weight * |r - x|_1 + l2_weight * |r - x|_2^2 + quant_loss [+ gan_weight * hinge G loss]

with ``quant_loss`` from the quantizer (``vq``: codebook + beta * commitment; ``ema``: beta *
commitment, the codebook follows EMA statistics; ``gumbel``: weighted KL to uniform, temperature
annealed from ``temperature`` to ``temperature_min`` with a cosine). The optional adversarial term
(off by default) uses a small PatchGAN discriminator with hinge losses, from step ``gan_start``.

Codebook health (``vq`` / ``ema``): before the first step the codebook is set to random encoder
outputs of the first batch, and every ``restart_every`` steps (until 3/4 of training) the codes unused
since the last check are moved onto random encoder outputs of the current batch.

Adam (betas 0.5, 0.9 as taming), linear warm-up then cosine decay to 10% of ``lr``, gradient
clipping at 1. Writes ``model.pt`` (atomic: temp file + ``os.replace``) and ``config.json`` (model
config, training arguments, final metrics) to ``out``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ofa.io_utils import atomic_output, write_atomic
from ofa.vqgan.convert import config_to_taming_dict, save_official
from ofa.vqgan.data import load_images, to_model_range
from ofa.vqgan.metrics import RunningQuality
from ofa.vqgan.model import VQGAN, GumbelQuantizer, VQGANConfig, codebook_stats, count_parameters

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "ofa-vqgan"


@dataclass
class TrainArgs:
    images: str
    out: str
    valid_images: Optional[str] = None
    schema: Optional[str] = None
    image_column: Optional[str] = None
    max_images: Optional[int] = None
    image_size: int = 64
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 20
    # model
    quantizer: str = "ema"
    n_embed: int = 512
    embed_dim: int = 64
    z_channels: int = 64
    ch: int = 32
    ch_mult: Sequence[int] = (1, 1, 2, 4)
    num_res_blocks: int = 1
    attn_resolutions: Sequence[int] = ()
    norm_groups: int = 8
    beta: float = 0.25
    ema_decay: float = 0.95
    kl_weight: float = 5e-4
    temperature: float = 1.0
    temperature_min: float = 0.1
    # objective
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    gan_weight: float = 0.0
    gan_start: int = 0
    restart_every: int = 25
    hflip: bool = False
    # run
    seed: int = 0
    threads: int = 2
    log_every: int = 25
    save_every: int = 0
    eval_batch_size: int = 32
    export_official: bool = False
    device: str = "cpu"

    def model_config(self) -> VQGANConfig:
        ch_mult = tuple(self.ch_mult)
        z = self.z_channels
        embed = z if self.quantizer == "gumbel" else self.embed_dim
        return VQGANConfig(ch=self.ch, ch_mult=ch_mult, num_res_blocks=self.num_res_blocks,
                           attn_resolutions=tuple(self.attn_resolutions), resolution=self.image_size,
                           z_channels=z, embed_dim=embed, n_embed=self.n_embed, quantizer=self.quantizer,
                           beta=self.beta, ema_decay=self.ema_decay, kl_weight=self.kl_weight,
                           temperature=self.temperature, norm_groups=self.norm_groups)


class PatchDiscriminator(nn.Module):
    """Small PatchGAN: 4x4 stride-2 convs with GroupNorm and LeakyReLU, one logit per patch."""

    def __init__(self, in_channels: int = 3, width: int = 32, layers: int = 3):
        super().__init__()
        mods, c = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
        for i in range(1, layers):
            nc = width * min(2 ** i, 8)
            mods += [nn.Conv2d(c, nc, 4, 2 if i < layers - 1 else 1, 1), nn.GroupNorm(min(8, nc), nc), nn.LeakyReLU(0.2)]
            c = nc
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _lr_at(step: int, args: TrainArgs) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _temperature_at(step: int, args: TrainArgs) -> float:
    t = step / max(1, args.steps - 1)
    return args.temperature_min + (args.temperature - args.temperature_min) * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model: VQGAN, images_u8: torch.Tensor, batch_size: int = 32, stochastic: bool = False) -> Dict[str, float]:
    """Reconstruction quality (PSNR, SSIM, L1, MSE on [0, 1] pixels; see ``metrics``) through the
    discrete bottleneck (encode -> codes -> decode) and codebook usage over the set."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    quality, all_codes = RunningQuality(), []
    for i in range(0, len(images_u8), batch_size):
        x = to_model_range(images_u8[i:i + batch_size]).to(device)
        codes = model.encode(x, stochastic=stochastic)
        quality.update(x, model.decode(codes))
        all_codes.append(codes.cpu())
    model.train(was_training)
    out = quality.result()
    out.update(codebook_stats(torch.cat(all_codes), model.n_embed))
    out["codes_per_image"] = int(all_codes[0][0].numel())
    return out


def save_checkpoint(model: VQGAN, path: str, step: int = 0, train_args: Optional[Dict] = None,
                    metrics: Optional[Dict] = None) -> None:
    """``{"format", "config", "state_dict", "step", "train_args", "metrics"}``, written atomically;
    everything but tensors is plain Python data, so ``torch.load(weights_only=True)`` reads it."""
    obj = {"format": CHECKPOINT_FORMAT, "version": 1, "config": model.config.to_dict(),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "step": int(step), "train_args": _jsonable(train_args or {}), "metrics": _jsonable(metrics or {})}
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


def _write_json(obj, path: str) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def train(args: TrainArgs, log: Callable[[str], None] = print) -> Dict:
    """Run training as described in the module docstring; returns the summary also saved in config.json."""
    torch.manual_seed(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = args.model_config()
    if args.image_size % cfg.factor:
        raise ValueError(f"--image-size {args.image_size} is not a multiple of the factor {cfg.factor}")
    if args.export_official:
        config_to_taming_dict(cfg)  # refuse now rather than after training
    t0 = time.time()
    data, _ = load_images(args.images, args.image_size, args.max_images, args.schema, args.image_column)
    valid = None
    if args.valid_images:
        valid, _ = load_images(args.valid_images, args.image_size, args.max_images, args.schema, args.image_column)
    log(f"loaded {len(data)} training images" + (f" and {len(valid)} validation images" if valid is not None else "")
        + f" at {args.image_size}px in {time.time() - t0:.1f}s")

    device = torch.device(args.device)
    model = VQGAN(cfg).to(device)
    model.train()
    log(f"model: {cfg.quantizer} f={cfg.factor} ({args.image_size}px -> {args.image_size // cfg.factor}x"
        f"{args.image_size // cfg.factor} codes), n_embed={cfg.n_embed}, {count_parameters(model) / 1e6:.2f}M params")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.9))
    disc = opt_d = None
    if args.gan_weight > 0:
        disc = PatchDiscriminator().to(device)
        opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))

    gen = torch.Generator().manual_seed(args.seed)
    usage = torch.zeros(cfg.n_embed)
    restarts, history, t0 = 0, [], time.time()
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "model.pt")
    codebook_quant = not isinstance(model.quantize, GumbelQuantizer)
    for step in range(args.steps):
        idx = torch.randint(len(data), (min(args.batch_size, len(data)),), generator=gen)
        x = to_model_range(data[idx]).to(device)
        if args.hflip:
            flip = (torch.rand(len(x), generator=gen) < 0.5).to(device)
            x[flip] = x[flip].flip(-1)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, args)
        if not codebook_quant:
            model.quantize.temperature = _temperature_at(step, args)

        h = model.encode_latent(x)
        flat_h = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        if codebook_quant and step == 0:
            model.quantize.restart_codes(torch.ones(cfg.n_embed, dtype=torch.bool, device=device), flat_h)
        q = model.quantize_latent(h)
        recon = model.decode_latent(q.z_q)
        rec_l1 = (recon - x).abs().mean()
        rec_l2 = (recon - x).pow(2).mean()
        loss = args.l1_weight * rec_l1 + args.l2_weight * rec_l2 + q.loss
        use_gan = disc is not None and step >= args.gan_start
        if use_gan:
            loss = loss - args.gan_weight * disc(recon).mean()  # hinge generator loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if use_gan:
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(recon.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()

        usage += torch.bincount(q.codes.flatten().cpu(), minlength=cfg.n_embed).float()
        if codebook_quant and args.restart_every and (step + 1) % args.restart_every == 0 \
                and step < 0.75 * args.steps:
            restarts += model.quantize.restart_codes((usage == 0).to(device), flat_h)
            usage.zero_()
        if (step + 1) % args.log_every == 0 or step == 0 or step + 1 == args.steps:
            stats = codebook_stats(q.codes.cpu(), cfg.n_embed)
            mse01 = rec_l2.item() / 4  # [-1, 1] -> [0, 1] scale
            rec = {"step": step + 1, "loss": loss.item(), "rec_l1": rec_l1.item(), "rec_l2": rec_l2.item(),
                   "quant_loss": q.loss.item(), "train_psnr": 10 * math.log10(1 / max(mse01, 1e-12)),
                   "batch_perplexity": stats["perplexity"], "restarts": restarts, "lr": opt.param_groups[0]["lr"],
                   "seconds": time.time() - t0}
            history.append(rec)
            log(f"step {step + 1}/{args.steps} loss {rec['loss']:.4f} l1 {rec['rec_l1']:.4f} "
                f"psnr {rec['train_psnr']:.2f} q {rec['quant_loss']:.4f} ppl {stats['perplexity']:.1f} "
                f"restarts {restarts} {rec['seconds']:.0f}s")
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save_checkpoint(model, ckpt_path, step + 1, asdict(args))

    final = {"train": evaluate(model, data, args.eval_batch_size)}
    if valid is not None:
        final["valid"] = evaluate(model, valid, args.eval_batch_size)
    for split, m in final.items():
        log(f"{split}: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, L1 {m['l1']:.4f}, codebook perplexity "
            f"{m['perplexity']:.1f}, used {m['used']}/{cfg.n_embed} ({100 * m['usage']:.1f}%) over {m['images']} images")
    summary = {"model": cfg.to_dict(), "factor": cfg.factor, "parameters": count_parameters(model),
               "train_args": _jsonable(asdict(args)), "steps": args.steps, "train_seconds": time.time() - t0,
               "final": final, "history": history}
    save_checkpoint(model, ckpt_path, args.steps, asdict(args), final)
    if args.export_official:
        save_official(model, os.path.join(args.out, "last.ckpt"), os.path.join(args.out, "model.yaml"),
                      global_step=args.steps)
    _write_json(summary, os.path.join(args.out, "config.json"))
    log(f"saved {ckpt_path} and {os.path.join(args.out, 'config.json')}")
    return summary
