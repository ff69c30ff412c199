"""The image backbone's learning-rate scale (ofa/lr_scale.py): exact scaled steps, and freezing in training."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ofa.lr_scale import backbone_parameters, check_optimizer, scaled_step, unwrap


def _pair(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(4, 3), nn.Linear(3, 2)


def _adamw_steps(lr_a, lr_b, scale=None, steps=3):
    """Three AdamW steps on a two-layer net; layer ``a`` either in its own group at ``lr_a`` or, with
    ``scale``, in one group at ``lr_b`` whose update to ``a`` is scaled by ``scaled_step``."""
    a, b = _pair()
    if scale is None:
        opt = torch.optim.AdamW([{"params": a.parameters(), "lr": lr_a}, {"params": b.parameters(), "lr": lr_b}],
                                weight_decay=0.1)
    else:
        opt = torch.optim.AdamW([*a.parameters(), *b.parameters()], lr=lr_b, weight_decay=0.1)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        b(torch.tanh(a(x))).pow(2).sum().backward()
        if scale is None:
            opt.step()
        else:
            scaled_step(opt.step, a.parameters(), scale)
    return a, b


def test_scaled_step_equals_adamw_at_the_scaled_learning_rate_for_those_parameters_only():
    ref_a, ref_b = _adamw_steps(lr_a=0.01 * 0.25, lr_b=0.01)
    got_a, got_b = _adamw_steps(lr_a=None, lr_b=0.01, scale=0.25)
    for r, g in zip([*ref_a.parameters(), *ref_b.parameters()], [*got_a.parameters(), *got_b.parameters()]):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_scale_zero_freezes_and_scale_one_is_the_plain_step():
    a0, _ = _pair()
    frozen, _ = _adamw_steps(lr_a=None, lr_b=0.01, scale=0.0)
    for p, q in zip(a0.parameters(), frozen.parameters()):
        assert torch.equal(p, q)
    plain_a, plain_b = _adamw_steps(lr_a=0.01, lr_b=0.01)
    one_a, one_b = _adamw_steps(lr_a=None, lr_b=0.01, scale=1.0)
    for p, q in zip([*plain_a.parameters(), *plain_b.parameters()], [*one_a.parameters(), *one_b.parameters()]):
        assert torch.equal(p, q)


def test_negative_scale_and_fp16_optimizer_are_refused():
    with pytest.raises(ValueError, match=">= 0"):
        scaled_step(lambda: None, [torch.zeros(1)], -0.5)

    class FlatFP16:
        fp32_params = torch.zeros(3)

    with pytest.raises(ValueError, match="--fp16"):
        check_optimizer(FlatFP16())
    check_optimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))


def test_backbone_parameters_unwraps_and_names_a_model_without_backbone():
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_images = nn.Conv2d(3, 4, 3)
            self.other = nn.Linear(2, 2)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Enc()

    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    m = Model()
    got = backbone_parameters(Wrapper(m))
    assert unwrap(Wrapper(m)) is m
    assert [id(p) for p in got] == [id(p) for p in m.encoder.embed_images.parameters()]
    with pytest.raises(ValueError, match="no image backbone"):
        backbone_parameters(nn.Linear(2, 2))
