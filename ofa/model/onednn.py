"""CPU inference through oneDNN with prepacked weights: linear layers, and convolutions fused with their
BatchNorm, ReLU and residual add.

On the CPU, ``F.linear`` re-lays out its weight for the matrix kernel at every call; for OFA's vocabulary
projection (``[V, C]`` with V = 59,457) that costs more than the product itself: ofa_tiny, 40 rows
(a beam-5 step of 8 samples): 18 ms plain, 7 ms with the weight packed once; 128 rows: 46 -> 21 ms.
A ResNet convolution with a packed weight and its ReLU (or the residual add + ReLU closing a bottleneck)
fused into the same kernel skips a pass over the activations: the 64 x 64 stage ran 1.5-2.2x faster.
Each fused convolution computes exactly what its ``conv -> + shift -> relu`` computes; the residual is added
inside the kernel and the packed linear sums in oneDNN's order, so the backbone and the logits differ from
the plain path by a few units in the last place (about 3e-6 on ofa_tiny's logits).

Only where nothing needs a gradient and nothing records the graph: the module in eval mode, autograd
off, float32 on the CPU, no tracing, scripting, ONNX export or ``torch.compile``, no CPU autocast.
Anything else takes the plain path. ``OFA_ONEDNN=0`` turns the fast path off.

A packed weight is kept beside its module (a weak map) with a key of every source tensor's storage address, version
counter and shape, so an optimizer step, ``load_state_dict`` or ``.to()`` invalidates it, and it is
dropped when the module enters training mode, so a training run holds no stale copies between
validations, and when the module is moved or cast (``_apply``). Writes through ``param.data`` bypass the
version counter (fairseq's optimizers step that way, always in training mode; peft's LoRA merge too, whose
base layers ``ofa.model.finetune`` marks ``keep_unpacked``): after such a write outside training, call
``drop_packed`` or ``train()``. It costs one extra copy of the weights while the model runs inference.
"""
from __future__ import annotations

import os
import weakref
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_PACKED: "weakref.WeakKeyDictionary[nn.Module, Tuple]" = weakref.WeakKeyDictionary()  # module -> (key, packed)
_UNPACKED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # modules whose weights others rewrite in place
_ROWS_HINT = 64  # rows the packed linear layout is tuned for (any row count is computed correctly)
# below about a million multiply-adds the oneDNN call costs more than it saves (a 256 x 256 map of 1-5 rows:
# 8-16 us plain, 22 us packed; 1,024 x 256 of 5 rows: 61 -> 35 us; 9,233 x 256 of 1 row: 272 -> 95 us)
_MIN_MACS = 1 << 20


def _ops_present() -> bool:
    try:
        return (torch.backends.mkldnn.is_available()
                and all(hasattr(torch.ops.mkldnn, name) for name in (
                    "_reorder_linear_weight", "_linear_pointwise",
                    "_reorder_convolution_weight", "_convolution_pointwise", "_convolution_pointwise_")))
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch built without oneDNN
        return False


AVAILABLE = _ops_present()


def enabled() -> bool:
    """oneDNN present and not turned off, by ``OFA_ONEDNN=0`` or ``torch.backends.mkldnn.flags(enabled=False)``
    (read at every call, so either can be toggled at run time)."""
    return AVAILABLE and torch.backends.mkldnn.enabled and os.environ.get("OFA_ONEDNN", "1") != "0"


def keep_unpacked(module: nn.Module) -> None:
    """Never pack ``module``'s weight: for a layer whose weight someone rewrites through ``.data`` outside
    training (peft's LoRA ``merge()`` / ``unmerge()`` add the adapter into the base layer that way)."""
    drop_packed(module)
    _UNPACKED.add(module)


def _graph_recorded() -> bool:
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def applies(module: nn.Module, x: Tensor) -> bool:
    """Whether ``module`` may run the packed path on input ``x`` (see the module docstring). Weights made under
    ``torch.inference_mode`` keep no version counter, so they take the plain path too."""
    if module.training or torch.is_grad_enabled() or not enabled():
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.requires_grad:
        return False
    if torch.is_autocast_enabled("cpu") or _graph_recorded() or module in _UNPACKED:
        return False
    return not any(t.is_inference() for t in (*module.parameters(), *module.buffers()))


def _key(tensors: Sequence[Tensor]) -> Tuple:
    return tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors)


def drop_packed(module: nn.Module) -> None:
    """Forget ``module``'s packed weight (the next inference call packs it again)."""
    _PACKED.pop(module, None)


def packed(module: nn.Module):
    """``module``'s packed weight, or ``None``. Kept beside the module (not in its ``__dict__``), so that
    ``copy.deepcopy``, pickling and state dicts never see these opaque oneDNN tensors."""
    entry = _PACKED.get(module)
    return None if entry is None else entry[1]


def _cached(module: nn.Module, sources: Sequence[Tensor], build):
    key = _key(sources)
    entry = _PACKED.get(module)
    if entry is None or entry[0] != key:
        entry = (key, build())
        _PACKED[module] = entry
    return entry[1]


def packed_linear(module: nn.Linear, x: Tensor) -> Tensor:
    """``F.linear(x, module.weight, module.bias)`` with the weight packed once: ``[..., in] -> [..., out]``."""
    weight = module.weight
    kernel = _cached(module, [weight], lambda: torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _ROWS_HINT))
    bias = module.bias.detach() if module.bias is not None else None
    return torch.ops.mkldnn._linear_pointwise(x, kernel, bias, "none", [], "")


class DropsPacked:
    """Mixin for a module whose weights (its own or its submodules') may be packed: entering training mode
    (training changes the weights: no packed copy is held meanwhile) or being moved or cast (``.to()``,
    ``.half()``, ``.float()``: a round trip may land at the same address and version) forgets them."""

    def train(self, mode: bool = True):
        if mode:
            for m in self.modules():
                drop_packed(m)
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        for m in self.modules():
            drop_packed(m)
        return super()._apply(fn, *args, **kwargs)


class Linear(DropsPacked, nn.Linear):
    """``nn.Linear`` (same parameters, names and initialisation) whose CPU inference uses ``packed_linear``."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only the plain path
            return F.linear(x, self.weight, self.bias)
        return self._eager(x)

    @torch.jit.unused
    def _eager(self, x: Tensor) -> Tensor:
        if x.numel() * self.out_features >= _MIN_MACS and applies(self, x):
            return packed_linear(self, x)
        return F.linear(x, self.weight, self.bias)


def fused_conv(conv: nn.Conv2d, x: Tensor, sources: Sequence[Tensor], folded, relu: bool,
               add: Optional[Tensor] = None) -> Tensor:
    """``relu?(conv2d(x, weight) + bias (+ add))`` as one oneDNN call, ``(weight, bias) = folded()`` packed
    once per ``sources`` (the tensors they are computed from: the cache key). ``x``: ``[B, Cin, H, W]``
    channels-last; ``add``: shaped like the output, channels-last, and OVERWRITTEN with the result (the
    residual of a bottleneck is not used again; writing into it instead of a new tensor saved a third of
    the call: a fresh 33 MB output costs its page faults). Returns ``[B, Cout, H', W']`` channels-last."""
    padding, stride, dilation = list(conv.padding), list(conv.stride), list(conv.dilation)

    def build():
        weight, bias = folded()
        kernel = torch.ops.mkldnn._reorder_convolution_weight(weight.detach(), padding, stride, dilation,
                                                              conv.groups, list(x.shape))
        return kernel, None if bias is None else bias.detach()

    kernel, bias = _cached(conv, sources, build)
    unary = "relu" if relu else "none"
    scalars = [None] if relu else []
    if add is None:
        return torch.ops.mkldnn._convolution_pointwise(x, kernel, bias, padding, stride, dilation, conv.groups,
                                                       unary, scalars, "")
    return torch.ops.mkldnn._convolution_pointwise_(add, x, kernel, bias, padding, stride, dilation, conv.groups,
                                                    "add", None, unary, scalars, "")
