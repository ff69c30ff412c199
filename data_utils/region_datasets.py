"""Datasets of the region tasks: object detection and grounded (region) captioning.

Both squash the image to ``patch_image_size`` square (``w_ratio = S / w``, ``h_ratio = S / h``) and write boxes
as ``<bin_i>`` tokens with the official convention (``boxes.py``: boxes ``x0, y0, x1, y1`` in original pixels,
resized, divided by ``max_image_size``, quantised to ``num_bins``), with the pretraining prompts, so a
``unify`` checkpoint starts from what it learned.

``DetectionDataset`` reads ``detection`` rows (``uniq_id, image, boxes``; ``boxes`` = ``x0,y0,x1,y1,cat_id,
cat_name`` items ``&&``-joined, empty for an image without objects). Source ``" what are the objects in the
image?"``; target, per object, its four bins then ``" " + cat_name``, then EOS (Pix2Seq's sequence). Training
puts the objects in a random order, new every epoch (seeded by the epoch and the row id); evaluation orders
them by position (top to bottom, then left to right, of the box's top-left corner). At most ``max_objects``
objects, and no more than fit the decoder's positions (an object is never cut in two). A batch carries
``refs`` (per sample every ground-truth object ``(box, name)``, box in original pixels, whatever the cap),
``image_sizes`` (``(w, h)``) and ``w_resize_ratios`` / ``h_resize_ratios``.

``RegionCaptionDataset`` reads ``region_caption`` rows (``uniq_id, image_id, caption, region_coord, image``):
source ``"  what does the region describe? region:"`` + the region's four bins, target the caption (training:
the first of its ``&&``-joined captions, cut to ``max_tgt_length`` words; evaluation: all of them, kept as
``refs`` for CIDEr / BLEU, as ``CaptionDataset``); a batch carries ``regions`` (each sample's box, original pixels).
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Tuple

import torch

from ofa.data_utils.boxes import box_to_bin_string
from ofa.data_utils.datasets import OFADataset
from ofa.data_utils.formats import box_inside, parse_box, parse_detection_boxes
from ofa.data_utils.transforms import square_resize
from ofa.data_utils.unify_dataset import DETECTION_PROMPT, region_caption_source

Object = Tuple[Tuple[float, float, float, float], int, str]


def order_objects(objects: List[Object], shuffle: bool, rng: random.Random) -> List[Object]:
    """Pix2Seq's object order: a random permutation (training), else by position: top-left corner's ``y0``
    then ``x0`` (ties keep the file order)."""
    if shuffle:
        objects = list(objects)
        rng.shuffle(objects)
        return objects
    return sorted(objects, key=lambda o: (o[0][1], o[0][0]))


class DetectionDataset(OFADataset):
    """``" what are the objects in the image?"`` -> ``(<bin> x4 + " name")*``."""

    columns = ("uniq_id", "image", "boxes")

    def objects(self, row, size) -> List[Object]:
        field = row["boxes"].strip()
        return parse_detection_boxes(field, size=size) if field else []

    def build(self, row):
        img = self.image(row["image"])
        objects = self.objects(row, img.size)
        S = self.cfg.patch_image_size
        w_ratio, h_ratio = S / img.size[0], S / img.size[1]
        image = square_resize(img, S, self.mean, self.std)
        rng = random.Random(f"{self.epoch}/{row['uniq_id']}")
        ordered = order_objects(objects, self.is_train, rng)[: self.cfg.max_objects]
        room = self.cfg.max_target_positions - 2  # BOS and EOS
        parts: List[torch.Tensor] = []
        used = 0
        for box, _, name in ordered:
            piece = torch.cat([self.encode(box_to_bin_string(box, w_ratio, h_ratio, self.cfg.max_image_size,
                                                             self.cfg.num_bins)),
                               self.encode(" " + name)])
            if used + len(piece) > room:
                break
            parts.append(piece)
            used += len(piece)
        tgt = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        refs = [(list(box), name) for box, _, name in objects]
        return self.example(self.source(DETECTION_PROMPT), tgt, image, uniq_id=row["uniq_id"], refs=refs,
                            image_size=img.size, w_resize_ratio=w_ratio, h_resize_ratio=h_ratio)

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        samples = [s for s in samples if s is not None]
        batch = super().collater(samples)
        if batch:
            batch["image_sizes"] = [tuple(s["image_size"]) for s in samples]
            # float64, not the base collater's float32: the boxes are scaled back with these ratios
            batch["w_resize_ratios"] = torch.tensor([s["w_resize_ratio"] for s in samples], dtype=torch.float64)
            batch["h_resize_ratios"] = torch.tensor([s["h_resize_ratio"] for s in samples], dtype=torch.float64)
        return batch


class RegionCaptionDataset(OFADataset):
    """``"  what does the region describe? region:" + <bin> x4`` -> the region's caption."""

    columns = ("uniq_id", "image", "caption", "region_coord")

    def build(self, row):
        img = self.image(row["image"])
        box = parse_box(row["region_coord"])
        box_inside(box, img.size, row["region_coord"])
        S = self.cfg.patch_image_size
        w_ratio, h_ratio = S / img.size[0], S / img.size[1]
        tensor = square_resize(img, S, self.mean, self.std)
        tgt, captions = self.caption_target(row["caption"])
        src = region_caption_source(self, box_to_bin_string(box, w_ratio, h_ratio, self.cfg.max_image_size,
                                                            self.cfg.num_bins))
        return self.example(src, tgt, tensor, uniq_id=row["uniq_id"], refs=captions, region=list(box))

    def collater(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = super().collater(samples)
        if batch:
            batch["regions"] = [s["region"] for s in samples if s is not None]
        return batch
