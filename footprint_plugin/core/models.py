"""Segmentation networks in plain torch (no torchvision/timm/smp), and their registry.

Every model takes float32 (B, C, H, W) with H and W multiples of 32 and returns logits
(B, out_channels, H, W). Every model has an ``.encoder`` attribute so fine-tuning can freeze it.
"""

from __future__ import annotations

import copy
import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from torch import nn

from .errors import ModelError

# ---------------------------------------------------------------------------------------------
# Building blocks


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
        if isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)
        elif isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)


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


# ---------------------------------------------------------------------------------------------
# ResNet encoders (torchvision-compatible parameter names, so ImageNet weights map 1:1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet trunk returning features at strides 2, 4, 8, 16, 32 (or 16 when dilated)."""

    def __init__(
        self,
        in_channels: int,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        dilate_last: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 64
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 1 if dilate_last else 2, 2 if dilate_last else 1)
        e = block.expansion
        self.channels = (64, 64 * e, 128 * e, 256 * e, 512 * e)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, dilation: int = 1) -> nn.Sequential:
        layers = [block(self.inplanes, planes, stride, dilation)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]


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


# ---------------------------------------------------------------------------------------------
# Efficient U-Net: MobileNetV2 encoder, light decoder (the CPU-friendly model)


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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.feature_stages:
                features.append(x)
        return features


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


class UNetMobileNetV2(nn.Module):
    """Efficient U-Net: MobileNetV2 encoder, light additive decoder, prediction at stride 2
    upsampled bilinearly to full resolution."""

    def __init__(self, in_channels: int, out_channels: int, decoder_channels: Sequence[int] = (96, 64, 48, 32)):
        super().__init__()
        self.encoder = MobileNetV2Encoder(in_channels)
        enc = self.encoder.channels
        skips = (enc[3], enc[2], enc[1], enc[0])
        blocks = []
        previous = enc[4]
        for skip_channels, width in zip(skips, decoder_channels):
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
        logits = self.head(y)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# TernausNet UNet11 (VGG-11 encoder), key-compatible with the SpaceNet 6 baseline / TernausNet


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


# ---------------------------------------------------------------------------------------------
# DeepLabV3+ (ResNet-50, output stride 16), the DFC2020 baseline's other network


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


# ---------------------------------------------------------------------------------------------
# Registry

ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "unet_mobilenetv2": lambda in_channels, out_channels: UNetMobileNetV2(in_channels, out_channels),
    "unet_resnet34": lambda in_channels, out_channels: UNetResNet34(in_channels, out_channels),
    "unet_vgg11": lambda in_channels, out_channels: UNet11(in_channels, out_channels),
    "deeplabv3plus_resnet": lambda in_channels, out_channels: DeepLabV3Plus(in_channels, out_channels),
}

ALLOWED_OUT_CHANNELS = (1, 3)


def list_architectures() -> list[str]:
    return list(ARCHITECTURES)


def create_model(name: str, in_channels: int, out_channels: int) -> nn.Module:
    """A freshly initialised network (train mode). Unknown names raise ModelError listing the valid ones."""
    if name not in ARCHITECTURES:
        raise ModelError(f"Unknown architecture '{name}'. Valid architectures: {', '.join(ARCHITECTURES)}.")
    if in_channels < 1:
        raise ModelError(f"in_channels must be at least 1, not {in_channels}. Fix the model card.")
    if out_channels not in ALLOWED_OUT_CHANNELS:
        raise ModelError(
            f"out_channels must be 1 (footprint) or 3 (footprint, boundary, contact), not {out_channels}. "
            "Fix the model card."
        )
    return ARCHITECTURES[name](in_channels, out_channels)


# ---------------------------------------------------------------------------------------------
# Inference-time optimisation


def _fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


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
                    module._modules[first] = _fold_bn_into_conv(conv, bn)
                    module._modules[second] = nn.Identity()
        for conv_name, bn_name in _CONV_BN_ATTRIBUTE_PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, _fold_bn_into_conv(conv, bn))
                setattr(module, bn_name, nn.Identity())
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
