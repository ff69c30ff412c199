"""Location tokens: quantisation round trips, resize-ratio bookkeeping, the official IoU hit rule."""
from __future__ import annotations

import torch

from ofa.data_utils.boxes import (bins_to_box, box_iou, box_to_bin_string, dequantize, grounding_hits, quantize,
                                  tokens_to_bins)


def test_quantize_follows_the_official_rounding():
    assert quantize([0, 512, 256]).tolist() == [0, 999, 500]  # round(0.5 * 999) = 500 (499.5 rounds to even)
    assert quantize([-5, 600]).tolist() == [0, 999]  # clamped


def test_round_trip_error_is_below_half_a_bin():
    coords = torch.rand(1000) * 512
    back = dequantize(quantize(coords))
    assert (back - coords).abs().max() <= 512 / 999 / 2 + 1e-9


def test_box_round_trip_through_resize_ratios():
    w, h, size = 640, 427, 512
    box = (100.0, 50.0, 400.5, 300.25)
    wr, hr = size / w, size / h
    s = box_to_bin_string(box, wr, hr)
    bins = [int(t[5:-1]) for t in s.split()]
    back = bins_to_box(bins, wr, hr)
    assert max(abs(a - b) for a, b in zip(back, box)) <= max(1 / wr, 1 / hr) * 512 / 999
    assert tokens_to_bins(torch.tensor(bins) + 58457, 58457).tolist() == bins


def test_iou_and_hits_use_the_official_rule():
    p = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    g = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]])
    iou = box_iou(p, g)
    assert torch.allclose(iou, torch.tensor([1.0, 1 / 3, 0.0]), atol=1e-5)
    assert grounding_hits(p, g).tolist() == [True, False, False]
