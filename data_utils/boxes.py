"""Location tokens: boxes <-> ``<bin_i>`` with the official convention (architecture.md 2).

Boxes are ``(x0, y0, x1, y1)`` (left, top, right, bottom) in pixels, origin at the top-left corner.
The image is squashed to ``S x S`` first; ``w_ratio = S / w`` and ``h_ratio = S / h`` map original
pixels to resized ones. A resized coordinate ``c`` becomes ``bin = round(c / max_image_size *
(num_bins - 1))`` (``max_image_size`` is 512 in every official recipe, not ``S``), and decodes as
``c = bin / (num_bins - 1) * max_image_size``, then ``x / w_ratio``, ``y / h_ratio`` back to the
original image.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

Box = Tuple[float, float, float, float]


def quantize(coords: Union[Tensor, Sequence[float]], max_image_size: float = 512, num_bins: int = 1000) -> Tensor:
    """Resized-pixel coordinates -> bin indices in ``[0, num_bins - 1]`` (clamped)."""
    c = torch.as_tensor(coords, dtype=torch.float64)
    return (c / max_image_size * (num_bins - 1)).round().clamp(0, num_bins - 1).long()


def dequantize(bins: Union[Tensor, Sequence[int]], max_image_size: float = 512, num_bins: int = 1000) -> Tensor:
    """Bin indices -> resized-pixel coordinates."""
    return torch.as_tensor(bins, dtype=torch.float64) / (num_bins - 1) * max_image_size


def box_to_bin_string(box: Box, w_ratio: float, h_ratio: float, max_image_size: float = 512,
                      num_bins: int = 1000) -> str:
    """Original-pixel box -> ``"<bin_x0> <bin_y0> <bin_x1> <bin_y1>"`` (encode without BPE)."""
    x0, y0, x1, y1 = box
    bins = quantize([x0 * w_ratio, y0 * h_ratio, x1 * w_ratio, y1 * h_ratio], max_image_size, num_bins)
    return " ".join(f"<bin_{int(b)}>" for b in bins)


def bins_to_box(bins: Union[Tensor, Sequence[int]], w_ratio: float, h_ratio: float, max_image_size: float = 512,
                num_bins: int = 1000) -> Box:
    """Four bin indices -> box in original-image pixels."""
    x0, y0, x1, y1 = dequantize(bins, max_image_size, num_bins).tolist()
    return (x0 / w_ratio, y0 / h_ratio, x1 / w_ratio, y1 / h_ratio)


def clamp_box(box: Sequence[float], size: Tuple[float, float]) -> Box:
    """``(x0, y0, x1, y1)`` clamped to a ``size = (w, h)`` image: every coordinate into ``[0, w]`` / ``[0, h]``."""
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    return (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))


def tokens_to_bins(tokens: Union[Tensor, Sequence[int]], bin_start: int) -> Tensor:
    """Token ids -> bin indices (``token - bin_start``)."""
    return torch.as_tensor(tokens, dtype=torch.long) - bin_start


def box_iou(pred: Tensor, gold: Tensor) -> Tensor:
    """IoU of matching boxes ``[N, 4]`` (x0, y0, x1, y1) as the official RefCOCO metric computes it.

    ``inter / (area_p + area_g - inter + 1e-6)``, with non-overlapping pairs giving 0.
    """
    lt = torch.maximum(pred[:, :2], gold[:, :2])
    rb = torch.minimum(pred[:, 2:], gold[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_g = (gold[:, 2] - gold[:, 0]) * (gold[:, 3] - gold[:, 1])
    return inter / (area_p + area_g - inter + 1e-6)


def grounding_hits(pred: Tensor, gold: Tensor, threshold: float = 0.5) -> Tensor:
    """Official Acc@0.5 per pair: IoU >= threshold and a positive-area intersection."""
    lt = torch.maximum(pred[:, :2], gold[:, :2])
    rb = torch.minimum(pred[:, 2:], gold[:, 2:])
    positive = (rb[:, 0] > lt[:, 0]) & (rb[:, 1] > lt[:, 1])
    return (box_iou(pred, gold) >= threshold) & positive
