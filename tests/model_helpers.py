"""Small shared pieces of the inference and image-generation tests: the ``logprob`` / ``prob`` contract of a
result, and a tiny VQGAN saved where ``ofa-vqgan`` would put it."""
from __future__ import annotations

import math
import os

import pytest
import torch


def check_logprob(result):
    """``logprob`` is a log-probability and ``prob`` its exp, whatever the task."""
    assert isinstance(result["logprob"], float) and isinstance(result["prob"], float)
    assert result["logprob"] <= 0.0 and 0.0 < result["prob"] <= 1.0
    assert result["prob"] == pytest.approx(math.exp(result["logprob"]), rel=1e-12)


def save_tiny_vqgan(folder, n_embed: int):
    """A seeded 4-level VQGAN with ``n_embed`` codes, saved as ``folder/model.pt`` (``ofa-vqgan train``'s layout)."""
    from ofa.vqgan import VQGAN, VQGANConfig

    torch.manual_seed(0)
    vq = VQGAN(VQGANConfig(ch=8, ch_mult=(1, 1, 1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
                           embed_dim=8, n_embed=n_embed, norm_groups=4, quantizer="vq"))
    os.makedirs(folder)
    torch.save({"config": dict(vq.config.__dict__), "state_dict": vq.state_dict()}, os.path.join(folder, "model.pt"))
    return vq
