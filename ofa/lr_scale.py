"""A smaller learning rate for the image backbone (``--image-backbone-lr-scale``).

fairseq gives every parameter group the scheduler's learning rate, so a per-module rate is applied
around the optimizer step instead: the backbone's parameters are remembered, the step runs for all
parameters, and the backbone's are pulled back to ``before + scale * (after - before)``.

For Adam / AdamW with decoupled weight decay (fairseq's ``adam``) and for SGD this is exactly a step at
``scale * lr`` for those parameters: the update is ``-lr * (direction + wd * p)`` and the optimizer's
moments do not depend on the learning rate. ``scale = 0`` freezes the backbone's weights (its
BatchNorm running statistics still follow the data).

Not supported with fairseq's ``--fp16`` optimizer, which steps a flat fp32 copy of the weights and
would overwrite the correction; ``--amp`` and ``--memory-efficient-fp16`` step the weights themselves.
"""
from typing import Callable, Iterable, List

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside fairseq's / torch's distributed wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def backbone_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The trainable parameters of an OFA model's image backbone (``encoder.embed_images``)."""
    encoder = getattr(unwrap(model), "encoder", None)
    backbone = getattr(encoder, "embed_images", None)
    if backbone is None:
        raise ValueError("--image-backbone-lr-scale: the model has no image backbone (encoder.embed_images)")
    return [p for p in backbone.parameters() if p.requires_grad]


def check_scale(scale: float) -> None:
    """Refuse a negative (or NaN) learning-rate scale."""
    if not scale >= 0:
        raise ValueError(f"--image-backbone-lr-scale must be >= 0, got {scale}")


def check_optimizer(optimizer) -> None:
    """Refuse optimizers that step a separate copy of the weights (fairseq's ``--fp16``)."""
    if hasattr(optimizer, "fp32_params"):
        raise ValueError("--image-backbone-lr-scale does not work with --fp16 (its optimizer steps a flat fp32 "
                         "copy of the weights); use --amp or --memory-efficient-fp16, or fp32")


def scaled_step(step: Callable[[], None], params: Iterable[torch.Tensor], scale: float) -> None:
    """Run ``step()`` and scale the change it made to ``params`` by ``scale`` (in place).

    Args:
        step: the optimizer step (updates ``params`` among others).
        params: the tensors whose update is scaled.
        scale: ``0 <= scale``; 1 leaves the step as it is.
    """
    check_scale(scale)
    params = list(params)
    if scale == 1.0 or not params:
        step()
        return
    before = [p.detach().clone() for p in params]
    step()
    with torch.no_grad():
        for p, b in zip(params, before):
            p.lerp_(b, 1.0 - scale)  # p = b + scale * (p - b)
