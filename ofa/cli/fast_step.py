"""fairseq's Adam step and gradient clipping with fewer, larger ops; ``install()`` (called once by
``ofa.cli.common.setup``) patches both.

fairseq's ``Adam`` (what ``--optimizer adam`` runs wherever no fused CUDA Adam is installed, so always on
the CPU) updates the parameters one by one, eight small ops each, and ``fairseq.utils.clip_grad_norm_``
(without apex's ``amp_C``) takes one norm per gradient: for the main job's 158 parameter tensors about
1,400 ops per update, each a kernel launch on a GPU and a Python round trip on the CPU. After ``install()``:

- ``--optimizer adam`` (``FairseqAdam`` building fairseq's ``Adam``) steps through torch's fused Adam kernel
  (``torch._fused_adamw_``: one pass over each tensor, no temporaries) with fairseq's arithmetic: its
  ``sqrt(v) + eps`` denominator and ``lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` step size are torch's
  update with ``eps / sqrt(1 - beta2^t)``, and the decoupled weight decay is the same product. The weights
  agree with fairseq's loop up to float32 rounding (about 1e-7 relative per step), as fairseq's own fused
  CUDA Adam does; ``--use-old-adam`` keeps fairseq's op-by-op arithmetic (next item).
- fairseq's ``Adam`` otherwise (``--use-old-adam``, or built directly): per parameter the same ops in the
  same order (moments, ``sqrt(v) + eps``, the decoupled weight decay, ``addcdiv``) with the same
  Python-float coefficients, over lists of tensors (``torch._foreach_*``), so the weights are the same bit
  for bit where the foreach ops run the per-tensor kernels (the CPU).
- Both keep fairseq's state (``step`` as an int, ``exp_avg``, ``exp_avg_sq``), so checkpoints are
  interchangeable. Groups that need more (amsgrad, sparse or half-precision tensors) take fairseq's loop.
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
    fairseq_adam.FairseqAdam.__init__ = _marks_fused(fairseq_adam.FairseqAdam.__init__)
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


def _marks_fused(original_init):
    """``FairseqAdam.__init__`` that lets the fairseq ``Adam`` it builds take the fused kernel unless
    ``--use-old-adam`` (fairseq's own switch to its plain Adam) is given."""
    @functools.wraps(original_init)
    def __init__(self, cfg, params):
        original_init(self, cfg, params)
        from fairseq.optim.adam import Adam

        if isinstance(self._optimizer, Adam):
            self._optimizer.ofa_fused = not getattr(cfg, "use_old_adam", False)

    return __init__


def fused_ready(optimizer) -> bool:
    """Whether the optimizer asked for the fused kernel (``ofa_fused``; ``FairseqAdam`` sets it), torch has
    one for every parameter's device, and ``foreach_ready`` holds."""
    if not getattr(optimizer, "ofa_fused", False) or not hasattr(torch, "_fused_adamw_"):
        return False
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    for group in optimizer.param_groups:
        if any(p.grad is not None and p.device.type not in devices for p in group["params"]):
            return False
    return foreach_ready(optimizer)


def foreach_adam_step(original):
    """fairseq's ``Adam.step`` (``original``) through the fused kernel where ``fused_ready``, else over lists
    of tensors where ``foreach_ready``, else ``original``."""
    @functools.wraps(original)
    def step(self, closure=None):
        update = _fused_update if fused_ready(self) else _adam_update if foreach_ready(self) else None
        if update is None:
            return original(self, closure)
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for chunk in _chunks(self, group):
                update(chunk, group)
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


def _fused_update(chunk: List[Tuple[torch.Tensor, Dict]], group) -> None:
    """fairseq's ``Adam`` update of one chunk (one device, one step count) in torch's fused AdamW kernel.

    torch divides ``sqrt(v)`` by ``s = sqrt(1 - beta2^t)`` before adding its eps and steps by
    ``lr / (1 - beta1^t)``; with ``eps / s`` that is fairseq's ``lr * s / (1 - beta1^t) * m / (sqrt(v) + eps)``.
    Its weight decay multiplies by ``1 - lr * weight_decay``, as fairseq's ``p - lr * weight_decay * p``.

    The kernel walks each tensor's memory in order, so a parameter, its gradient and its moments must share
    one gap-free layout: a chunk with a gradient laid out otherwise than its parameter (or a parameter with
    gaps) takes the op-by-op update (``_adam_update``), which follows every tensor's strides; moments in
    another layout (a checkpoint's contiguous state for a channels-last weight) are copied into the
    parameter's layout once."""
    if not all(_dense(p) and _same_layout(p.grad, p) for p, _ in chunk):
        return _adam_update(chunk, group)
    for p, state in chunk:
        for name in ("exp_avg", "exp_avg_sq"):
            if not _same_layout(state[name], p):
                state[name] = torch.empty_like(p.data).copy_(state[name])
    params = [p.data for p, _ in chunk]
    beta1, beta2 = group["betas"]
    step = chunk[0][1]["step"]
    steps = [torch.full((), float(step), device=params[0].device)] * len(params)  # read, never written
    torch._fused_adamw_(params, [p.grad.data for p, _ in chunk], [s["exp_avg"] for _, s in chunk],
                        [s["exp_avg_sq"] for _, s in chunk], [], steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                        weight_decay=group["weight_decay"], eps=group["eps"] / math.sqrt(1 - beta2 ** step),
                        amsgrad=False, maximize=False)


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of one shape order their elements alike in memory (strides of size-1 dimensions
    do not matter: a 1 x 1 convolution's weight and gradient often differ there)."""
    return a.shape == b.shape and all(n == 1 or x == y for n, x, y in zip(a.shape, a.stride(), b.stride()))


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory without gaps or overlaps, its dimensions in any
    order (contiguous, channels-last, transposed: yes; a strided slice or an expanded tensor: no)."""
    if t.numel() == 0:
        return True
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(t.shape, t.stride()) if n != 1), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


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
