"""Image transforms of OFA pretraining (docs/tasks.md 3.2-3.3), with boxes carried along.

All randomness comes from the ``random.Random`` passed in (and, for RandAugment, a torch seed drawn
from it), so a sample is fixed by its seed.

- ``random_resize``: the official ``RandomResize(scales, max_size)``: the short side becomes a random
  scale, unless that makes the long side exceed ``max_size`` (then the long side is ``max_size``).
- ``center_crop`` / ``object_center_crop``: crop ``size x size`` at the centre / centred on the box
  (clamped to the image); areas outside the image are zero-padded, boxes are shifted and clipped.
- ``large_scale_jitter``: detection: scale so that both sides are at least ``s * size`` with
  ``s ~ U(1, 1.5)``, random ``size x size`` crop (boxes clipped, zero-area ones dropped), or padding
  at the bottom / right when ``s == 1``.
- ``official_rand_augment``: RandAugment(2 ops, magnitude 7) restricted to the official ten ops
  (Identity, AutoContrast, Equalize, Brightness, Sharpness, ShearX/Y, TranslateX/Y, Rotate): no op
  that changes hues, so colour words of captions stay true.
"""
from __future__ import annotations

import random
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torchvision.transforms import functional as TF
from torchvision.transforms import v2

Boxes = List[Tuple[float, float, float, float]]

OFFICIAL_AUG_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
                    "TranslateX", "TranslateY", "Rotate")


class _OfficialRandAugment(v2.RandAugment):
    _AUGMENTATION_SPACE = {k: v for k, v in v2.RandAugment._AUGMENTATION_SPACE.items() if k in OFFICIAL_AUG_OPS}


def official_rand_augment(num_ops: int = 2, magnitude: int = 7) -> v2.RandAugment:
    return _OfficialRandAugment(num_ops=num_ops, magnitude=magnitude)


def apply_seeded(transform, img, rng: random.Random):
    """Run a torchvision transform with the torch RNG seeded from ``rng`` (global state restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.getrandbits(63))
        return transform(img)


def resize_size(w: int, h: int, size: int, max_size: Optional[int]) -> Tuple[int, int]:
    """The official ``get_size_with_aspect_ratio``: ``(new_w, new_h)``."""
    if max_size is not None:
        lo, hi = float(min(w, h)), float(max(w, h))
        if hi / lo * size > max_size:
            size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return w, h
    if w < h:
        return size, int(size * h / w)
    return int(size * w / h), size


def _scale_boxes(boxes: Boxes, sx: float, sy: float) -> Boxes:
    return [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in boxes]


def random_resize(img: Image.Image, boxes: Boxes, scales: Sequence[int], max_size: Optional[int],
                  rng: random.Random) -> Tuple[Image.Image, Boxes]:
    size = rng.choice(list(scales))
    w, h = img.size
    nw, nh = resize_size(w, h, size, max_size)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    return img, _scale_boxes(boxes, nw / w, nh / h)


def crop(img: Image.Image, boxes: Boxes, left: int, top: int, size: int,
         drop_empty: bool = False) -> Tuple[Image.Image, Boxes, List[int]]:
    """``size x size`` crop at (left, top), zero-padded outside the image; returns the kept box indices."""
    out = TF.crop(img, top, left, size, size)
    kept, idx = [], []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        b = (min(max(x0 - left, 0.0), size), min(max(y0 - top, 0.0), size),
             min(max(x1 - left, 0.0), size), min(max(y1 - top, 0.0), size))
        if drop_empty and not (b[2] > b[0] and b[3] > b[1]):
            continue
        kept.append(b)
        idx.append(i)
    return out, kept, idx


def center_crop(img: Image.Image, size: int) -> Image.Image:
    return TF.center_crop(img, [size, size])


def object_center_crop(img: Image.Image, box: Tuple[float, float, float, float], size: int) -> Tuple[Image.Image, Boxes]:
    """The official ``ObjectCenterCrop``: a crop centred on the box, moved back inside the image."""
    w, h = img.size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    left = max(cx - size / 2 + min(w - cx - size / 2, 0), 0)
    top = max(cy - size / 2 + min(h - cy - size / 2, 0), 0)
    out, boxes, _ = crop(img, [box], int(round(left)), int(round(top)), size)
    return out, boxes


def large_scale_jitter(img: Image.Image, boxes: Boxes, size: int, rng: random.Random, scale_min: float = 1.0,
                       scale_max: float = 1.5) -> Tuple[Image.Image, Boxes, List[int]]:
    """The official ``LargeScaleJitter``; returns the image, kept boxes and their indices."""
    w, h = img.size
    s = rng.random() * (scale_max - scale_min) + scale_min
    target = round(s * size)
    scale = max(target / h, target / w)
    nw, nh = int(round(w * scale)), int(round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    boxes = _scale_boxes(boxes, nw / w, nh / h)
    if s > 1:
        left = int((nw - size) * rng.random()) if nw > size else 0
        top = int((nh - size) * rng.random()) if nh > size else 0
    else:
        left = top = 0  # pad at the bottom / right
    return crop(img, boxes, left, top, size, drop_empty=True)


def hflip(img: Image.Image, boxes: Boxes) -> Tuple[Image.Image, Boxes]:
    w = img.size[0]
    return TF.hflip(img), [(w - x1, y0, w - x0, y1) for x0, y0, x1, y1 in boxes]
