"""U-Net family: ResNet-34 U-Net and the light-decoder U-Nets (MobileNetV2, EfficientNet-Lite)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from torch import nn

from .blocks import LightDecoderBlock, UNetDecoderBlock, _init_weights, conv_bn_act
from .encoders import create_encoder
from .encoders.mobilenetv2 import MobileNetV2Encoder
from .encoders.resnet import BasicBlock, ResNetEncoder


class UNetResNet34(nn.Module):
    """U-Net with a ResNet-34 encoder; decoder widths as in segmentation_models_pytorch's Unet."""

    def __init__(self, in_channels: int, out_channels: int, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)):
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, BasicBlock, (3, 4, 6, 3))
        enc = self.encoder.channels  # strides 2, 4, 8, 16, 32
        skips = [enc[3], enc[2], enc[1], enc[0], 0]
        blocks = []
        previous = enc[4]
        for skip_channels, width in zip(skips, decoder_channels):
            blocks.append(UNetDecoderBlock(previous, skip_channels, width))
            previous = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(previous, out_channels, 3, padding=1)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1, f2, f3, f4, f5 = self.encoder(x)
        y = f5
        for block, skip in zip(self.decoder, (f4, f3, f2, f1, None)):
            y = block(y, skip)
        return self.head(y)


class LightUNet(nn.Module):
    """Efficient U-Net: any registry encoder, light additive decoder, prediction at stride 2
    upsampled bilinearly to full resolution."""

    def __init__(self, encoder: nn.Module, out_channels: int, decoder_channels: Sequence[int]) -> None:
        super().__init__()
        self.encoder = encoder
        enc = encoder.out_channels
        blocks = []
        previous = enc[4]
        for skip_channels, width in zip((enc[3], enc[2], enc[1], enc[0]), decoder_channels):
            blocks.append(LightDecoderBlock(previous, skip_channels, width))
            previous = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Sequential(conv_bn_act(previous, previous, 3), nn.Conv2d(previous, out_channels, 1))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1, f2, f3, f4, f5 = self.encoder(x)
        y = f5
        for block, skip in zip(self.decoder, (f4, f3, f2, f1)):
            y = block(y, skip)
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


class UNetMobileNetV2(LightUNet):
    """The CPU-friendly efficient U-Net on MobileNetV2 (the bundled v1.x models)."""

    def __init__(self, in_channels: int, out_channels: int, decoder_channels: Sequence[int] = (96, 64, 48, 32)):
        super().__init__(MobileNetV2Encoder(in_channels), out_channels, decoder_channels)


class UNetEfficientNetLite(LightUNet):
    """The light U-Net on an EfficientNet-Lite encoder, which can start from ImageNet weights."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        variant: str = "efficientnet_lite0",
        decoder_channels: Sequence[int] = (128, 64, 48, 32),
    ) -> None:
        super().__init__(create_encoder(variant, in_channels), out_channels, decoder_channels)
