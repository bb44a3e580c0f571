"""Inference-time optimisation: BatchNorm folding, fused conv+activation, reduced-precision copies."""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from ..common.errors import ModelError

_CONV_BN_ATTRIBUTE_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


@torch.no_grad()
def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a Conv2d into that conv, in place.

    Saves the separate BatchNorm pass (about 15 % of CPU time for the efficient U-Net) and lets
    channels_last run end to end. Only for inference: the result has no BatchNorm to train.
    """
    for module in list(model.modules()):
        if module.training:
            raise ModelError("fuse_conv_bn() needs a model in eval mode; call model.eval() first.")
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = module._modules[first], module._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[first] = fuse_conv_bn_eval(conv, bn)
                    module._modules[second] = nn.Identity()
        for conv_name, bn_name in _CONV_BN_ATTRIBUTE_PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return model


@torch.no_grad()
def fold_zero_padding(model: nn.Module) -> nn.Module:
    """Move each symmetric ZeroPad2d that directly precedes an unpadded Conv2d into that conv, in place.

    TF-"same" networks (EfficientNet-Lite) pad explicitly before every conv: each pad copies the whole
    activation (about a quarter of the CPU time of the efficient U-Net), while a conv pads for free.
    Zeros added either way, so the result is the same. Asymmetric pads (stride-2 layers) stay.
    """
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            pad, conv = module._modules[first], module._modules[second]
            if not isinstance(pad, nn.ZeroPad2d) or not isinstance(conv, nn.Conv2d):
                continue
            left, right, top, bottom = pad.padding
            if left != right or top != bottom or conv.padding_mode != "zeros" or tuple(conv.padding) != (0, 0):
                continue
            conv.padding = (top, left)
            module._modules[first] = nn.Identity()
    return model


class FusedConvAct(nn.Module):
    """Conv2d (BatchNorm already folded in) + ReLU/ReLU6 as one oneDNN call on CPU.

    In bf16 PyTorch's separate elementwise activation costs as much as the depthwise conv before
    it; oneDNN applies it while writing the conv output. Other devices use the plain modules.
    """

    def __init__(self, conv: nn.Conv2d, activation: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.activation = activation
        if isinstance(activation, nn.ReLU6):
            self.attr, self.scalars = "hardtanh", [0.0, 6.0]
        else:
            self.attr, self.scalars = "relu", []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if x.device.type != "cpu" or x.dtype != conv.weight.dtype:
            return self.activation(conv(x))
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            conv.weight,
            conv.bias,
            list(conv.padding),
            list(conv.stride),
            list(conv.dilation),
            conv.groups,
            self.attr,
            self.scalars,
            "",
        )


@functools.lru_cache(maxsize=1)
def _pointwise_conv_available() -> bool:
    """The fused oneDNN op exists in most torch CPU builds (it backs torch.compile); check it works here."""
    try:
        conv = nn.Conv2d(2, 2, 3, padding=1).eval()
        x = torch.randn(1, 2, 8, 8)
        with torch.no_grad():
            fused = FusedConvAct(conv, nn.ReLU6())(x)
            return bool(torch.allclose(fused, F.relu6(conv(x)), atol=1e-5))
    except Exception:  # op missing or unsupported on this CPU/build: keep the plain modules
        return False


def fuse_conv_activation(model: nn.Module) -> nn.Module:
    """Replace Sequential(Conv2d, [Identity], ReLU|ReLU6) runs by FusedConvAct, in place (CPU inference only).

    Call after fuse_conv_bn (which turns the BatchNorm between them into Identity).
    """
    if not _pointwise_conv_available():
        return model
    # A conv also reachable under another name (TernausNet's conv1 = encoder[0]) may be called
    # directly by forward(); fusing one of its names would leave the other un-fused: skip those.
    references: dict[int, int] = {}
    for parent in model.modules():
        for child in parent._modules.values():
            references[id(child)] = references.get(id(child), 0) + 1
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for index, name in enumerate(names):
            conv = module._modules[name]
            if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                continue
            if references.get(id(conv), 0) > 1:
                continue
            follow = index + 1
            while follow < len(names) and isinstance(module._modules[names[follow]], nn.Identity):
                follow += 1
            if follow < len(names) and type(module._modules[names[follow]]) in (nn.ReLU, nn.ReLU6):
                module._modules[name] = FusedConvAct(conv, module._modules[names[follow]])
                module._modules[names[follow]] = nn.Identity()
    return model


class Float32InputLayer(nn.Module):
    """Runs the input layer in fp32 inside an otherwise reduced-precision network.

    Rounding the scaled input to bf16 (8 significant bits) is itself a perturbation of about a
    third of a grey level, which measurably moved a trained model's masks; one fp32 conv costs little.
    """

    def __init__(self, module: nn.Module, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(self.out_dtype)


def reduced_precision_copy(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A copy of an inference model in `dtype` whose first convolution stays fp32 (see Float32InputLayer)."""
    copied = copy.deepcopy(model)
    first = next((m for m in copied.modules() if isinstance(m, (nn.Conv2d, FusedConvAct))), None)
    if first is None:
        return copied.to(dtype)
    # Collect every reference first: some models alias the same conv under two names (TernausNet).
    references = [
        (parent, name) for parent in copied.modules() for name, child in parent._modules.items() if child is first
    ]
    wrapper = Float32InputLayer(first, dtype)
    for parent, name in references:
        parent._modules[name] = wrapper
    copied = copied.to(dtype)
    first.float()
    return copied
