"""MobileNetV2 encoder (width 1.0), the trunk of the CPU-friendly efficient U-Net."""

from __future__ import annotations

import torch
from torch import nn

from ..blocks import conv_bn_act


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            conv_bn_act(hidden, out_channels, 1, activation=None),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion t, channels c, repeats n, stride s) of MobileNetV2.
MOBILENETV2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 trunk (width 1.0, no final 1280 conv) with features at strides 2..32."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.stem = conv_bn_act(in_channels, 32, 3, 2, activation=nn.ReLU6)
        stages: list[nn.Sequential] = []
        previous = 32
        for t, c, n, s in MOBILENETV2_SETTINGS:
            blocks = [InvertedResidual(previous if i == 0 else c, c, s if i == 0 else 1, t) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            previous = c
        self.stages = nn.ModuleList(stages)
        # Output of stages 0 (s2), 1 (s4), 2 (s8), 4 (s16), 6 (s32).
        self.feature_stages = (0, 1, 2, 4, 6)
        self.channels = (16, 24, 32, 96, 320)
        self.out_channels = self.channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.feature_stages:
                features.append(x)
        return features
