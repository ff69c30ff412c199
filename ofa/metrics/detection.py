"""COCO box mAP: a pure implementation of ``pycocotools``' bbox evaluation, and the same through pycocotools.

Inputs (both functions)::

    ground_truth: {image_id: [(box, category), ...]}          every image evaluated, objects or not
    detections:   {image_id: [(box, category, score), ...]}   images absent from ground_truth are ignored

(categories: any hashable labels, ids or names; the detection task uses the class names).

Boxes are ``(x0, y0, x1, y1)`` (left, top, right, bottom) in pixels of the original image. A ground-truth
box's area is its width x height (COCO's own files use the segmentation's area for the small / medium / large
ranges; converted box-only data has none). No box is a crowd region.

The result holds COCO's six box numbers at 100 detections per image, in [0, 1], -1 where undefined (no
ground truth in that area range): ``AP`` (IoU .50:.05:.95), ``AP50``, ``AP75``, ``APs`` (area < 32^2),
``APm`` (32^2 .. 96^2), ``APl`` (> 96^2).

``coco_map`` follows ``COCOeval.evaluateImg`` / ``accumulate`` / ``summarize`` step by step (greedy matching
of detections by descending score to the best-IoU unmatched box, boxes outside the area range ignored,
precision made monotone and read at 101 recall points, the mean over categories with ground truth), so it
equals pycocotools (tests/test_detection.py), without its printing and its object overhead: validation
during training uses it. ``pycocotools_map`` runs pycocotools itself on the same inputs (``ofa-evaluate``).
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

Box = Sequence[float]
GroundTruth = Mapping[Hashable, Sequence[Tuple[Box, Hashable]]]
Detections = Mapping[Hashable, Sequence[Tuple[Box, Hashable, float]]]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e5 ** 2)}
MAX_DETS = 100
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _xywh(box: Box) -> Tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0, y0, x1 - x0, y1 - y0


def box_iou_matrix(dts: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU ``[D, G]`` of ``[x, y, w, h]`` boxes as COCO computes it (no crowd boxes)."""
    if len(dts) == 0 or len(gts) == 0:
        return np.zeros((len(dts), len(gts)))
    d, g = dts[:, None, :], gts[None, :, :]
    iw = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    ih = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    # no overlap is IoU 0 whatever the union (a box with inverted corners has a union of 0 or below)
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


def _match_image(dt_boxes, dt_scores, gt_boxes, area: Tuple[float, float]):
    """One image and category (``COCOeval.evaluateImg``): returns ``(scores [D], matched [T, D] bool,
    dt_ignored [T, D] bool, gt_ignored [G] bool)`` with detections best first, at most ``MAX_DETS``."""
    gt_area = gt_boxes[:, 2] * gt_boxes[:, 3] if len(gt_boxes) else np.zeros(0)
    gt_ig = (gt_area < area[0]) | (gt_area > area[1])
    g_order = np.argsort(gt_ig, kind="mergesort")  # boxes inside the range first
    gt_boxes, gt_ig = gt_boxes[g_order], gt_ig[g_order]
    d_order = np.argsort(-dt_scores, kind="mergesort")[:MAX_DETS]
    dt_boxes, dt_scores = dt_boxes[d_order], dt_scores[d_order]
    ious = box_iou_matrix(dt_boxes, gt_boxes)
    T, D, G = len(IOU_THRESHOLDS), len(dt_boxes), len(gt_boxes)
    gt_taken = np.zeros((T, G), dtype=bool)
    matched = np.zeros((T, D), dtype=bool)
    dt_ig = np.zeros((T, D), dtype=bool)
    for t, thr in enumerate(IOU_THRESHOLDS):
        for d in range(D):
            best, m = min(thr, 1 - 1e-10), -1
            for g in range(G):
                if gt_taken[t, g]:
                    continue
                if m > -1 and not gt_ig[m] and gt_ig[g]:  # a box in range is matched: stop at the ignored ones
                    break
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m == -1:
                continue
            dt_ig[t, d] = gt_ig[m]
            matched[t, d] = True
            gt_taken[t, m] = True
    dt_area = dt_boxes[:, 2] * dt_boxes[:, 3] if D else np.zeros(0)
    outside = (dt_area < area[0]) | (dt_area > area[1])
    dt_ig |= ~matched & outside[None, :]
    return dt_scores, matched, dt_ig, gt_ig


def _precision_at_recalls(tp: np.ndarray, fp: np.ndarray, n_gt: int) -> np.ndarray:
    """COCO's interpolated precision at ``RECALL_POINTS`` from cumulative true / false positives."""
    recall = tp / n_gt
    precision = tp / (fp + tp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    out = np.zeros(len(RECALL_POINTS))
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    ok = idx < len(precision)
    out[ok] = precision[idx[ok]]
    return out


ImageMatches = Dict[Tuple[Hashable, int], Tuple[np.ndarray, np.ndarray, np.ndarray, int]]


def match_image(gt_objects: Sequence[Tuple[Box, Hashable]], det_objects: Sequence[Tuple[Box, Hashable, float]],
                categories: Iterable[Hashable]) -> ImageMatches:
    """One image's matching (``COCOeval.evaluateImg``) for every category and area range:
    ``{(category, area index): (scores [D], matched [T, D], ignored [T, D], ground-truth boxes in range)}``,
    leaving out pairs with neither ground truth nor detections."""
    cats = list(categories)
    gts: Dict[Hashable, List] = {}
    for box, c in gt_objects:
        gts.setdefault(c, []).append(_xywh(box))
    dts: Dict[Hashable, Tuple[List, List]] = {}
    for box, c, score in det_objects:
        entry = dts.setdefault(c, ([], []))
        entry[0].append(_xywh(box))
        entry[1].append(float(score))
    out: ImageMatches = {}
    for c in cats:
        if c not in gts and c not in dts:
            continue
        g = np.array(gts.get(c, []), dtype=np.float64).reshape(-1, 4)
        d, s = dts.get(c, ([], []))
        d, s = np.array(d, dtype=np.float64).reshape(-1, 4), np.array(s, dtype=np.float64)
        for a, area in enumerate(AREA_RANGES.values()):
            scores, matched, dt_ig, gt_ig = _match_image(d, s, g, area)
            out[(c, a)] = (scores, matched, dt_ig, int((~gt_ig).sum()))
    return out


def accumulate(images: Sequence[ImageMatches], categories: Iterable[Hashable]) -> Dict[str, float]:
    """COCO's six numbers from per-image matches (``COCOeval.accumulate`` + ``summarize``), images in order."""
    cats = list(categories)
    precision = -np.ones((len(IOU_THRESHOLDS), len(cats), len(AREA_RANGES)))
    for a in range(len(AREA_RANGES)):
        for k, c in enumerate(cats):
            parts = [m[(c, a)] for m in images if (c, a) in m]
            n_gt = sum(p[3] for p in parts)
            if n_gt == 0:
                continue
            order = np.argsort(-np.concatenate([p[0] for p in parts]), kind="mergesort")
            matched = np.concatenate([p[1] for p in parts], axis=1)[:, order]
            ignored = np.concatenate([p[2] for p in parts], axis=1)[:, order]
            tp = np.cumsum(matched & ~ignored, axis=1).astype(float)
            fp = np.cumsum(~matched & ~ignored, axis=1).astype(float)
            for t in range(len(IOU_THRESHOLDS)):
                precision[t, k, a] = _precision_at_recalls(tp[t], fp[t], n_gt).mean()
    return _summary(precision)


def _categories(ground_truth: GroundTruth, categories: Optional[Iterable[Hashable]]) -> List[Hashable]:
    if categories is not None:
        return sorted(set(categories), key=str)
    return sorted({c for objs in ground_truth.values() for _, c in objs}, key=str)


def coco_map(ground_truth: GroundTruth, detections: Detections,
             categories: Optional[Iterable[Hashable]] = None) -> Dict[str, float]:
    """COCO's six box AP numbers (see the module docstring); ``categories`` default: those of the ground
    truth (any hashable labels: ids or names). Detections of other categories are ignored."""
    acc = DetectionAccumulator(_categories(ground_truth, categories))
    for img in sorted(ground_truth, key=str):
        acc.add(ground_truth[img], detections.get(img, ()))
    return acc.summary()


class DetectionAccumulator:
    """Per-image matches gathered batch by batch (validation during training); ``summary()`` is ``coco_map``
    over every image added so far, in the order added."""

    def __init__(self, categories: Iterable[Hashable]):
        self.categories = list(categories)
        self._keep = set(self.categories)
        self.images: List[ImageMatches] = []

    def add(self, gt_objects, det_objects) -> None:
        dets = [d for d in det_objects if d[1] in self._keep]
        self.images.append(match_image(gt_objects, dets, self.categories))

    def summary(self) -> Dict[str, float]:
        return accumulate(self.images, self.categories)


def _summary(precision: np.ndarray) -> Dict[str, float]:
    """``precision [T, K, A]`` (mean over recall points; -1 where a category has no ground truth) -> KEYS."""
    def mean(p):
        p = p[p > -1]
        return float(p.mean()) if p.size else -1.0

    t50 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5)))
    t75 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.75)))
    return {"AP": mean(precision[:, :, 0]), "AP50": mean(precision[t50, :, 0]), "AP75": mean(precision[t75, :, 0]),
            "APs": mean(precision[:, :, 1]), "APm": mean(precision[:, :, 2]), "APl": mean(precision[:, :, 3])}


def pycocotools_map(ground_truth: GroundTruth, detections: Detections,
                    categories: Optional[Iterable[int]] = None) -> Dict[str, float]:
    """The same six numbers computed by ``pycocotools.cocoeval.COCOeval`` (its printing silenced); images and
    categories are numbered 1.. in sorted order for it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_ids = {img: k + 1 for k, img in enumerate(sorted(ground_truth, key=str))}
    cat_ids = {c: k + 1 for k, c in enumerate(_categories(ground_truth, categories))}
    anns = []
    for img, objs in ground_truth.items():
        for box, c in objs:
            if c not in cat_ids:  # a class outside ``categories``: left out, as coco_map leaves it
                continue
            x, y, w, h = _xywh(box)
            anns.append({"id": len(anns) + 1, "image_id": image_ids[img], "category_id": cat_ids[c],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    dets = []
    for img, objs in detections.items():
        if img in image_ids:
            dets += [{"image_id": image_ids[img], "category_id": cat_ids[c], "bbox": list(_xywh(box)), "score": float(s)}
                     for box, c, s in objs if c in cat_ids]
    if not dets:  # pycocotools cannot load an empty result list: 0 where there is ground truth, else -1
        has = [any(lo <= a["area"] <= hi for a in anns) for lo, hi in AREA_RANGES.values()]
        return dict(zip(KEYS, [0.0 if has[0] else -1.0] * 3 + [0.0 if h else -1.0 for h in has[1:]]))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in image_ids.values()], "annotations": anns,
                      "categories": [{"id": k, "name": str(c)} for c, k in cat_ids.items()]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"AP": float(stats[0]), "AP50": float(stats[1]), "AP75": float(stats[2]), "APs": float(stats[3]),
            "APm": float(stats[4]), "APl": float(stats[5])}
