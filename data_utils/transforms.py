"""Image transforms of the official recipes (docs/tasks.md 2.x).

- ``square_resize``: caption / VQA / SNLI-VE / classification evaluation: bicubic squash to ``S x S``
  (aspect ratio NOT kept), then ``[-1, 1]`` normalisation (mean = std = 0.5).
- ``grounding_resize``: RefCOCO: the same squash (the official ``RandomResize([S], max_size=S)`` always
  yields ``S x S``) with the box scaled along and the resize ratios kept for decoding.
- ``train_augment``: RandAugment (2 ops, magnitude 7, as the official ``RandomAugment(2, 7)``) plus a
  random resized crop and flip, for classification training where the official recipe augments.

Tensors are ``[3, S, S]`` float32.
"""
from __future__ import annotations

from typing import Tuple

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as TF

from ofa.data_utils.boxes import Box

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(img: Image.Image, mean=MEAN, std=STD) -> torch.Tensor:
    """PIL RGB -> normalised ``[3, H, W]``."""
    return TF.normalize(TF.to_tensor(img), mean, std)


def square_resize(img: Image.Image, size: int, mean=MEAN, std=STD) -> torch.Tensor:
    """Bicubic squash to ``size x size`` and normalise."""
    return to_tensor(img.resize((size, size), Image.BICUBIC), mean, std)


def grounding_resize(img: Image.Image, box: Box, size: int) -> Tuple[torch.Tensor, Box, float, float]:
    """Squash to ``size x size``; returns ``(tensor, box in resized pixels, w_ratio, h_ratio)``."""
    w, h = img.size
    w_ratio, h_ratio = size / w, size / h
    x0, y0, x1, y1 = box
    return square_resize(img, size), (x0 * w_ratio, y0 * h_ratio, x1 * w_ratio, y1 * h_ratio), w_ratio, h_ratio


def train_augment(size: int, mean=MEAN, std=STD) -> v2.Compose:
    """Random resized crop + flip + RandAugment(2, 7) -> normalised tensor."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandAugment(num_ops=2, magnitude=7),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])
