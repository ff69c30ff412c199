"""Small shared pieces of the model, inference and image-generation tests: a toy forward batch, the ``logprob`` /
``prob`` contract of a result, and a tiny VQGAN saved where ``ofa-vqgan`` would put it."""
from __future__ import annotations

import math
import os

import pytest
import torch


def toy_batch(d, bsz=2, src_len=7, tgt_len=5, seed=0, image=64):
    """Seeded ``OFAModel.forward`` keyword arguments: random text ids 4..43 between BOS and EOS, a BOS-led target
    prefix and ``image x image`` images (64: 4 x 4 patches), every image real."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 44, (bsz, src_len), generator=g)
    src[:, 0], src[:, -1] = d.bos(), d.eos()
    prev = torch.randint(4, 44, (bsz, tgt_len), generator=g)
    prev[:, 0] = d.bos()
    return dict(src_tokens=src, src_lengths=torch.full((bsz,), src_len), prev_output_tokens=prev,
                patch_images=torch.randn(bsz, 3, image, image, generator=g),
                patch_masks=torch.ones(bsz, dtype=torch.bool))


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
