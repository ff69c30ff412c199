"""Image backbones that turn ``[B, 3, S, S]`` images into a stride-16 feature map.

``OFAResNet`` is the official backbone (``models/ofa/resnet.py``): torchvision-style ResNet v1.5
stem + Bottleneck stages 1-3 (no layer4), trained BatchNorm, per-sample drop path inside each
stage. Module names equal the official checkpoint names (``conv1``, ``bn1``, ``layer{1,2,3}``,
``downsample.{0,1}``) so state dicts load without remapping.

``TimmBackbone`` wraps any timm CNN feature extractor whose stride-16 stage is taken; it is not
checkpoint-compatible with released models and exists so that small models train fast on a CPU.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ofa.model import onednn
from ofa.model.layers import DropPath

RESNET_LAYERS = {
    # "resnet34" in OFA is the same [3, 4, 6] Bottleneck stack as resnet50 (official quirk)
    "resnet18": [2, 2, 2],
    "resnet34": [3, 4, 6],
    "resnet50": [3, 4, 6],
    "resnet101": [3, 4, 23],
    "resnet152": [3, 8, 36],
}


def batchnorm_affine(bn: nn.Module):
    """``(scale [C], shift [C])`` with ``bn(x) == x * scale + shift`` per channel, or ``None`` while ``bn``
    normalises with batch statistics (a training ``BatchNorm2d``, or one without running statistics)."""
    if isinstance(bn, FrozenBatchNorm2d):
        return bn.affine()
    if bn.training or bn.running_mean is None:
        return None
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bn.bias - bn.running_mean * scale


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``, as one convolution with the normalisation folded into its kernel and bias whenever
    ``bn`` uses fixed statistics (eval mode, or frozen): ``conv(x, w * scale) + shift``. The same function
    (the per-channel scale moves inside the sum), one pass over the activations instead of two: at
    inference BatchNorm was a fifth of ofa_tiny's forward on the CPU."""
    affine = batchnorm_affine(bn)
    if affine is None:
        return bn(conv(x))
    scale, shift = affine
    return F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), shift, conv.stride, conv.padding,
                    conv.dilation, conv.groups)


def _bn_sources(bn: nn.Module) -> List[torch.Tensor]:
    return [bn.weight, bn.bias, bn.running_mean, bn.running_var]


def conv_bn_fused(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor, relu: bool,
                  add: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``relu?(bn(conv(x)) (+ add))`` in one oneDNN call with the BatchNorm folded into a packed kernel
    (``onednn.fused_conv``; the result is written into ``add``); the caller checks ``onednn.applies`` and
    that the statistics are fixed."""
    def folded():
        scale, shift = batchnorm_affine(bn)
        return conv.weight * scale.view(-1, 1, 1, 1), shift

    return onednn.fused_conv(conv, x, [conv.weight, *_bn_sources(bn)], folded, relu, add)


def _fuse_inference(module: nn.Module, x: torch.Tensor) -> bool:
    """The oneDNN fused path applies: CPU inference, every BatchNorm of ``module`` with fixed statistics, and
    no forward hooks (a hook could keep a block's output, which the next block overwrites)."""
    if not onednn.applies(module, x) or nn.modules.module._global_forward_hooks:
        return False
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        if isinstance(m, nn.BatchNorm2d) and (m.training or m.running_mean is None):
            return False
    return True


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, v1.5) -> 1x1 bottleneck, expansion 4, no conv biases."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 drop_path_rate: float = 0.0, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """``fused``: CPU inference through ``conv_bn_fused`` (the caller checked ``_fuse_inference``); the
        residual is then overwritten with the output, so ``x`` must be an activation no one else holds."""
        if fused:
            identity = x if self.downsample is None else conv_bn_fused(self.downsample[0], self.downsample[1], x,
                                                                        relu=False)
            out = conv_bn_fused(self.conv1, self.bn1, x, relu=True)
            out = conv_bn_fused(self.conv2, self.bn2, out, relu=True)
            return conv_bn_fused(self.conv3, self.bn3, out, relu=True, add=identity)
        identity = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x)
        out = self.relu(conv_bn(self.conv1, self.bn1, x))
        out = self.relu(conv_bn(self.conv2, self.bn2, out))
        out = conv_bn(self.conv3, self.bn3, out)
        return self.relu(identity + self.drop_path(out))


class OFAResNet(onednn.DropsPacked, nn.Module):
    """Stem + stages 1-3 of a Bottleneck ResNet: ``[B, 3, S, S] -> [B, 1024, S/16, S/16]``.

    Activations run channels-last (NHWC in memory; shapes are unchanged): oneDNN on the CPU and cuDNN on
    GPUs run convolutions and BatchNorm faster in that layout, and the output's ``flatten(2).transpose(1, 2)``
    into patch tokens is then a view. The parameters stay contiguous (NCHW), and so do their gradients, which
    fairseq's distributed and fp16 paths flatten with ``view(-1)``. Sums are taken in another order, so
    features differ from the NCHW ones in the last bits (the parity tests hold).
    """

    out_channels = 1024

    def __init__(self, layers: List[int], drop_path_rate: float = 0.0, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1, drop_path_rate, norm_layer)
        self.layer2 = self._make_layer(128, layers[1], 2, drop_path_rate, norm_layer)
        self.layer3 = self._make_layer(256, layers[2], 2, drop_path_rate, norm_layer)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes, blocks, stride, drop_path_rate, norm_layer):
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
            norm_layer(planes * Bottleneck.expansion),
        )
        # official: block 0 has no drop path, block i gets linspace(0, rate, blocks)[i]
        rates = torch.linspace(0, drop_path_rate, blocks, device="cpu").tolist()
        mods = [Bottleneck(self.inplanes, planes, stride, downsample, 0.0, norm_layer)]
        self.inplanes = planes * Bottleneck.expansion
        mods += [Bottleneck(self.inplanes, planes, 1, None, rates[i], norm_layer) for i in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if _fuse_inference(self, x):
            x = self.maxpool(conv_bn_fused(self.conv1, self.bn1, x, relu=True))
            for stage in (self.layer1, self.layer2, self.layer3):
                for block in stage:
                    x = block(x, fused=True)
            return x
        x = self.maxpool(self.relu(conv_bn(self.conv1, self.bn1, x)))
        return self.layer3(self.layer2(self.layer1(x)))


class TimmBackbone(nn.Module):
    """Any timm CNN truncated at its stride-``stride`` stage: ``[B, 3, S, S] -> [B, C, S/stride, S/stride]``.

    The stride is 16 (OFA's patch size) unless asked otherwise; a stride of 8 gives small images a finer
    patch grid (64 px -> 8 x 8 tokens). ``out_channels`` is read from timm's feature info. Used only for
    models trained by this project (released OFA checkpoints always use ``OFAResNet``).
    """

    def __init__(self, name: str, drop_path_rate: float = 0.0, stride: int = 16):
        super().__init__()
        try:
            import timm
        except ImportError as e:  # pragma: no cover - timm is a declared dependency
            raise ImportError("the timm image backbone needs `pip install timm`") from e
        probe = timm.create_model(name, pretrained=False, features_only=True)
        reductions = probe.feature_info.reduction()
        if stride not in reductions:
            raise ValueError(f"timm model {name!r} has no stride-{stride} feature stage (strides {reductions})")
        index = reductions.index(stride)
        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=(index,), **kwargs)
        self.out_channels = self.body.feature_info.channels()[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[0]


def build_image_backbone(resnet_type: str, drop_path_rate: float = 0.0, freeze_bn: bool = False) -> nn.Module:
    """Build the backbone named by the model config's ``resnet_type``.

    ``resnet50/101/152`` (and OFA's aliases ``resnet18/34``) build the official stages;
    ``timm:<name>`` builds a timm feature extractor cut at stride 16, ``timm:<name>@<stride>`` at another
    stride (e.g. ``timm:resnet10t@8``).
    """
    if resnet_type.startswith("timm:"):
        name, _, stride = resnet_type[len("timm:"):].partition("@")
        if stride and not stride.isdigit():
            raise ValueError(f"resnet_type {resnet_type!r}: the stride after '@' must be an integer")
        return TimmBackbone(name, drop_path_rate, int(stride) if stride else 16)
    if resnet_type not in RESNET_LAYERS:
        raise ValueError(
            f"unknown resnet_type {resnet_type!r}; choose one of {sorted(RESNET_LAYERS)} or 'timm:<model name>'"
        )
    norm_layer = FrozenBatchNorm2d if freeze_bn else nn.BatchNorm2d
    return OFAResNet(RESNET_LAYERS[resnet_type], drop_path_rate, norm_layer)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (official ``--freeze-resnet``)."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def affine(self):
        """``(scale [C], shift [C])`` with ``forward(x) == x * scale + shift`` per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine()
        return x * scale[None, :, None, None] + shift[None, :, None, None]
