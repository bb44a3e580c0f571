"""TernausNet UNet11 (VGG-11 encoder), key-compatible with the SpaceNet 6 baseline / TernausNet."""

from __future__ import annotations

import torch
from torch import nn

from .encoders.vgg import vgg11_features


class TernausConvRelu(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x))


class TernausDecoderBlock(nn.Module):
    def __init__(self, in_channels: int, middle_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            TernausConvRelu(in_channels, middle_channels),
            nn.ConvTranspose2d(middle_channels, out_channels, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNet11(nn.Module):
    """TernausNet UNet11. Attribute names follow ternaus/TernausNet exactly (the conv aliases
    share parameters with ``encoder``, so the state_dict lists both names, as the original does)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, num_filters: int = 32) -> None:
        super().__init__()
        nf = num_filters
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = vgg11_features(in_channels)
        self.relu = self.encoder[1]
        self.conv1 = self.encoder[0]
        self.conv2 = self.encoder[3]
        self.conv3s = self.encoder[6]
        self.conv3 = self.encoder[8]
        self.conv4s = self.encoder[11]
        self.conv4 = self.encoder[13]
        self.conv5s = self.encoder[16]
        self.conv5 = self.encoder[18]
        self.center = TernausDecoderBlock(nf * 8 * 2, nf * 8 * 2, nf * 8)
        self.dec5 = TernausDecoderBlock(nf * (16 + 8), nf * 8 * 2, nf * 8)
        self.dec4 = TernausDecoderBlock(nf * (16 + 8), nf * 8 * 2, nf * 4)
        self.dec3 = TernausDecoderBlock(nf * (8 + 4), nf * 4 * 2, nf * 2)
        self.dec2 = TernausDecoderBlock(nf * (4 + 2), nf * 2 * 2, nf)
        self.dec1 = TernausConvRelu(nf * (2 + 1), nf)
        self.final = nn.Conv2d(nf, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1 = self.relu(self.conv1(x))
        conv2 = self.relu(self.conv2(self.pool(conv1)))
        conv3s = self.relu(self.conv3s(self.pool(conv2)))
        conv3 = self.relu(self.conv3(conv3s))
        conv4s = self.relu(self.conv4s(self.pool(conv3)))
        conv4 = self.relu(self.conv4(conv4s))
        conv5s = self.relu(self.conv5s(self.pool(conv4)))
        conv5 = self.relu(self.conv5(conv5s))
        center = self.center(self.pool(conv5))
        dec5 = self.dec5(torch.cat([center, conv5], 1))
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))
        dec1 = self.dec1(torch.cat([dec2, conv1], 1))
        return self.final(dec1)
