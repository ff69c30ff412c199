"""Reconstruction quality measures, in plain torch (no downloads, no extra packages).

- ``psnr``: peak signal-to-noise ratio ``10 * log10(data_range**2 / MSE)`` per image (MSE over all
  channels and pixels).
- ``ssim``: structural similarity of Wang et al. 2004 with their constants: an 11x11 Gaussian window
  (sigma 1.5, separable, "valid" positions only, no padding), ``K1 = 0.01``, ``K2 = 0.03``,
  ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2`` with ``L = data_range``, Gaussian-weighted (population)
  local statistics; the SSIM map is averaged over positions, then over channels. Images smaller
  than the window use the largest odd window that fits.

Both take float images ``[B, C, H, W]``; use ``to_unit`` first for [-1, 1] model outputs.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two [B, C, H, W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, shape [B]; ``inf`` where the images are identical."""
    _check(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length ``size`` centred on the middle tap."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter(img: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of every channel of [B, C, H, W]."""
    c = img.shape[1]
    k = len(g)
    gh = g.view(1, 1, 1, k).repeat(c, 1, 1, 1).to(img)
    gv = g.view(1, 1, k, 1).repeat(c, 1, 1, 1).to(img)
    return F.conv2d(F.conv2d(img, gh, groups=c), gv, groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM, shape [B] (see the module docstring for the exact definition)."""
    _check(x, y)
    size = min(window_size, x.shape[2], x.shape[3])
    size -= 1 - size % 2  # largest odd size that fits
    g = gaussian_window(size, sigma)
    x, y = x.double(), y.double()
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mu_x ** 2
    syy = _filter(y * y, g) - mu_y ** 2
    sxy = _filter(x * y, g) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return smap.mean(dim=(2, 3)).mean(1).float()


class RunningQuality:
    """Accumulates PSNR / SSIM / L1 / MSE over batches of [-1, 1] images (means over images)."""

    def __init__(self):
        self.n = 0
        self.sums = {"psnr": 0.0, "ssim": 0.0, "l1": 0.0, "mse": 0.0}
        self.inf_psnr = 0

    @torch.no_grad()
    def update(self, original: torch.Tensor, recon: torch.Tensor) -> None:
        a, b = to_unit(original), to_unit(recon)
        p = psnr(a, b)
        finite = torch.isfinite(p)
        self.inf_psnr += int((~finite).sum())
        # identical images have infinite PSNR; cap them at 100 dB so the mean stays finite
        self.sums["psnr"] += float(torch.where(finite, p, torch.full_like(p, 100.0)).sum())
        self.sums["ssim"] += float(ssim(a, b).sum())
        self.sums["l1"] += float((a - b).abs().flatten(1).mean(1).sum())
        self.sums["mse"] += float((a - b).pow(2).flatten(1).mean(1).sum())
        self.n += a.shape[0]

    def result(self) -> Dict[str, float]:
        out = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        out["images"] = self.n
        # PSNR of the mean squared error over the whole set (less dominated by easy images)
        out["psnr_of_mean_mse"] = 10 * math.log10(1.0 / out["mse"]) if out["mse"] > 0 else float("inf")
        return out
