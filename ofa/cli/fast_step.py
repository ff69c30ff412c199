"""fairseq's Adam step and gradient clipping over all tensors at once (``torch._foreach_*``), same numbers.

fairseq's ``Adam`` (what ``--optimizer adam`` runs wherever no fused CUDA Adam is installed, so always on
the CPU) updates the parameters one by one, eight small ops each, and ``fairseq.utils.clip_grad_norm_``
(without apex's ``amp_C``) takes one norm per gradient: for the main job's 158 parameter tensors about
1,400 ops per update, each a kernel launch on a GPU and a Python round trip on the CPU. ``install()``
(called once by ``ofa.cli.common.setup``) makes both issue the same ops over lists of tensors:

- ``Adam.step``: per parameter the same arithmetic in the same order (moments, ``sqrt(v) + eps``, the
  decoupled weight decay, ``addcdiv``) with the same Python-float coefficients, so the weights are the
  same bit for bit where the foreach ops run the per-tensor kernels (the CPU). The state (``step`` as an
  int, ``exp_avg``, ``exp_avg_sq``) and so the checkpoints keep fairseq's layout. Groups that need more
  (amsgrad, sparse or half-precision tensors) take fairseq's own loop.
- ``clip_grad_norm_``: the per-gradient float32 norms in one ``_foreach_norm`` call, then fairseq's
  ``norm(stack(norms))`` and clipping. Only the path fairseq takes without ``amp_C`` changes; the
  norm stays on the gradients' device (fairseq moved it to the current GPU even for ``--cpu`` runs).
"""
from __future__ import annotations

import functools
import math
from typing import Dict, List, Tuple

import torch

# parameters whose elements add up to more than this are stepped in several foreach calls (bounds the
# temporary ``sqrt(v) + eps`` to 128 MiB of float32)
CHUNK_ELEMENTS = 1 << 25


def install() -> None:
    """Patch fairseq's ``Adam.step`` and ``utils.clip_grad_norm_`` (idempotent)."""
    from fairseq import utils as fairseq_utils
    from fairseq.optim import adam as fairseq_adam

    if getattr(fairseq_adam.Adam, "_ofa_foreach", False):
        return
    # torch wraps an optimizer class's ``step`` in its profiling hook at first construction: patch the bare one
    original = getattr(fairseq_adam.Adam.step, "__wrapped__", fairseq_adam.Adam.step)
    fairseq_adam.Adam.step = foreach_adam_step(original)
    fairseq_utils.clip_grad_norm_ = _foreach_clip_grad_norm(fairseq_utils.clip_grad_norm_)
    fairseq_adam.Adam._ofa_foreach = True


# ---------------------------------------------------------------------------------------------- Adam
def foreach_ready(optimizer) -> bool:
    """Whether every parameter with a gradient is a dense float32 tensor with a float32 gradient and no
    group uses amsgrad (what the foreach step covers)."""
    for group in optimizer.param_groups:
        if group.get("amsgrad", False):
            return False
        for p in group["params"]:
            g = p.grad
            if g is not None and (g.is_sparse or g.dtype != torch.float32 or p.dtype != torch.float32):
                return False
    return True


def foreach_adam_step(original):
    """fairseq's ``Adam.step`` (``original``) over lists of tensors where ``foreach_ready``, else ``original``."""
    @functools.wraps(original)
    def step(self, closure=None):
        if not foreach_ready(self):
            return original(self, closure)
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for chunk in _chunks(self, group):
                _adam_update(chunk, group)
        return loss

    return step


def _chunks(optimizer, group) -> List[List[Tuple[torch.Tensor, Dict]]]:
    """``(parameter, state)`` of the group's parameters with a gradient, state initialised and its step
    counted as fairseq's loop does, in lists of one device and one step count of at most ``CHUNK_ELEMENTS``."""
    buckets: Dict[Tuple[torch.device, int], List[List[Tuple[torch.Tensor, Dict]]]] = {}
    sizes: Dict[Tuple[torch.device, int], int] = {}  # elements in each bucket's last list
    for p in group["params"]:
        if p.grad is None:
            continue
        state = optimizer.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p.data)
            state["exp_avg_sq"] = torch.zeros_like(p.data)
        else:
            state["exp_avg"] = state["exp_avg"].to(p.data)
            state["exp_avg_sq"] = state["exp_avg_sq"].to(p.data)
        state["step"] += 1
        key = (p.device, state["step"])
        lists = buckets.setdefault(key, [[]])
        if lists[-1] and sizes[key] + p.numel() > CHUNK_ELEMENTS:
            lists.append([])
            sizes[key] = 0
        lists[-1].append((p, state))
        sizes[key] = sizes.get(key, 0) + p.numel()
    return [chunk for lists in buckets.values() for chunk in lists]


def _adam_update(chunk: List[Tuple[torch.Tensor, Dict]], group) -> None:
    """fairseq's ``Adam`` update of one chunk (one device, one step count), op for op over the list."""
    params = [p.data for p, _ in chunk]
    grads = [p.grad.data for p, _ in chunk]
    exp_avgs = [s["exp_avg"] for _, s in chunk]
    exp_avg_sqs = [s["exp_avg_sq"] for _, s in chunk]
    beta1, beta2 = group["betas"]
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denoms, group["eps"])
    step = chunk[0][1]["step"]
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
    if group["weight_decay"] != 0:
        torch._foreach_add_(params, params, alpha=-group["weight_decay"] * group["lr"])
    torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-step_size)


# ---------------------------------------------------------------------------------------------- clipping
def _foreach_clip_grad_norm(original):
    @functools.wraps(original)
    def clip_grad_norm_(params, max_norm, aggregate_norm_fn=None) -> torch.Tensor:
        from fairseq import utils as fairseq_utils

        if isinstance(params, torch.Tensor):
            params = [params]
        params = list(params)
        with_grad = [p for p in params if p is not None and getattr(p, "grad", None) is not None]
        grads = [p.grad.detach() for p in with_grad if not hasattr(p, "expert")]
        if (len(grads) < 2 or fairseq_utils.multi_tensor_l2norm_available
                or len({(g.device, g.dtype) for g in grads}) != 1 or grads[0].device.type == "xla"):
            return original(params, max_norm, aggregate_norm_fn)
        expert_grads = [p.grad.detach() for p in with_grad if hasattr(p, "expert")]
        total_norm = torch.norm(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)))
        if aggregate_norm_fn is not None:
            total_norm = aggregate_norm_fn(total_norm)
        if max_norm > 0:
            clip_coef = (float(max_norm) / (total_norm + 1e-6)).clamp_(max=1)
            torch._foreach_mul_(grads + expert_grads, clip_coef)
        return total_norm

    return clip_grad_norm_
