"""VGG-11 features (torchvision layout), the encoder of TernausNet UNet11."""

from __future__ import annotations

from torch import nn

# torchvision vgg11().features layout ("A" config without the final pool index 20 kept).
VGG11_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11_features(in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    previous = in_channels
    for value in VGG11_CONFIG:
        if value == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(previous, int(value), 3, padding=1), nn.ReLU(inplace=True)]
            previous = int(value)
    return nn.Sequential(*layers)
