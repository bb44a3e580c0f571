"""Building blocks shared by the segmentation networks: conv-BN-act, decoder blocks, init."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from torch import nn


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    activation: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + optional activation."""
    padding = dilation * (kernel_size - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    # Zero-init the last BN of each residual branch: every block starts as the identity, which
    # keeps activations bounded in a fresh deep ResNet and helps training from scratch.
    for module in model.modules():
        zero_init = getattr(module, "zero_init_residual", None)
        if callable(zero_init):
            zero_init()


def _upsample_to(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=reference.shape[-2:], mode="nearest")


class UNetDecoderBlock(nn.Module):
    """Nearest x2 upsample, concatenate the skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(in_channels + skip_channels, out_channels)
        self.conv2 = conv_bn_act(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if skip is not None:
            x = torch.cat([_upsample_to(x, skip), skip], dim=1)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv2(self.conv1(x))


class LightDecoderBlock(nn.Module):
    """1x1 reduce, nearest x2 upsample, add the projected skip, one depthwise-separable 3x3.

    Adding (not concatenating) skips and using depthwise 3x3 keeps the decoder a small part of
    the cost: on CPU the full-resolution stages dominate run time.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = conv_bn_act(in_channels, out_channels, 1)
        self.skip = conv_bn_act(skip_channels, out_channels, 1, activation=None)
        self.refine = nn.Sequential(
            conv_bn_act(out_channels, out_channels, 3, groups=out_channels),
            conv_bn_act(out_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = _upsample_to(self.reduce(x), skip)
        return self.refine(F.relu(x + self.skip(skip)))
