"""DeepLabV3+ (ResNet-50, output stride 16), the DFC2020 baseline's other network."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from torch import nn

from .blocks import _init_weights, conv_bn_act
from .encoders.resnet import Bottleneck, ResNetEncoder


class ASPP(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_act(in_channels, out_channels, 1)]
            + [conv_bn_act(in_channels, out_channels, 3, dilation=r) for r in rates]
        )
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_act(in_channels, out_channels, 1))
        self.project = conv_bn_act(out_channels * (len(rates) + 2), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = self.pooling(x).expand(-1, -1, x.shape[-2], x.shape[-1])
        return self.project(torch.cat(outs + [pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ with a dilated ResNet-50 encoder (output stride 16).

    Image-level pooling in ASPP sees the whole tile, so tiled predictions depend slightly on the
    tile; the inference blend hides this, but this model is the least tile-invariant here.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, Bottleneck, (3, 4, 6, 3), dilate_last=True)
        enc = self.encoder.channels
        self.aspp = ASPP(enc[4], 256)
        self.low_level = conv_bn_act(enc[1], 48, 1)
        self.fuse = nn.Sequential(conv_bn_act(256 + 48, 256, 3), conv_bn_act(256, 256, 3))
        self.head = nn.Conv2d(256, out_channels, 1)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _f1, f2, _f3, _f4, f5 = self.encoder(x)
        y = self.aspp(f5)
        y = F.interpolate(y, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        y = self.fuse(torch.cat([y, self.low_level(f2)], dim=1))
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
