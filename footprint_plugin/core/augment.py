"""Chip augmentation, driven by a seeded numpy Generator so training is reproducible.

EO: flips, 90-degree rotations, brightness/contrast, small scale jitter (done by the sampler's
window size, then resized here) and grayscale, so a model trained on RGB also reads panchromatic
imagery (which inference feeds as the pan band repeated in every channel).
SAR: left-right flip only. Rotating or mirroring top-bottom would put the radar shadow and
layover on the wrong side of buildings relative to the look direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional


@dataclass
class AugmentOptions:
    sensor: str = "EO"
    brightness: float = 0.15  # added offset, in scaled (0..1) units
    contrast: float = 0.25  # multiplicative, 1 +/- this
    grayscale_probability: float = 0.3
    # Of the grayscale chips, the share made to look like a satellite panchromatic band (bright vegetation).
    pan_like_probability: float = 0.6
    scale_jitter: float = 0.15  # log-scale range of the sampler's window size

    @classmethod
    def for_sensor(cls, sensor: str) -> AugmentOptions:
        if sensor == "SAR":
            return cls(sensor="SAR", brightness=0.0, contrast=0.0, grayscale_probability=0.0, scale_jitter=0.0)
        return cls(sensor="EO")


def resize_chip(
    image: np.ndarray, targets: np.ndarray, weight: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize a (scale-jittered) window to the chip size: bilinear image, nearest targets and weight."""
    if image.shape[-1] == size:
        return image, targets, weight
    img = functional.interpolate(torch.from_numpy(image)[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    tgt = functional.interpolate(torch.from_numpy(targets)[None], size=(size, size), mode="nearest")[0]
    wgt = functional.interpolate(torch.from_numpy(weight)[None, None], size=(size, size), mode="nearest")[0, 0]
    return img.numpy(), tgt.numpy(), wgt.numpy()


def _pan_like(gray: np.ndarray, rgb: np.ndarray, vegetation_gain: float) -> np.ndarray:
    """Mimic a WorldView/Pleiades pan band: it reaches into the near infrared, where trees and grass are bright.

    Excess green (2G - R - B) stands in for the missing NIR; the result is re-stretched to 0..1
    the way inference stretches a whole pan raster (2-98 percentiles).
    """
    red, green, blue = rgb
    vegetation = np.clip(2.0 * green - red - blue, 0.0, None)
    pan = gray + vegetation_gain * vegetation
    low, high = np.percentile(pan, [2, 98])
    return np.clip((pan - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)


def augment_chip(
    image: np.ndarray,
    targets: np.ndarray,
    weight: np.ndarray,
    rng: np.random.Generator,
    options: AugmentOptions,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random geometric and radiometric changes of one chip (C,S,S), (K,S,S), (S,S)."""
    if rng.random() < 0.5:
        image, targets, weight = image[..., ::-1], targets[..., ::-1], weight[..., ::-1]
    if options.sensor != "SAR":
        if rng.random() < 0.5:
            image, targets, weight = image[..., ::-1, :], targets[..., ::-1, :], weight[..., ::-1, :]
        turns = int(rng.integers(0, 4))
        if turns:
            image = np.rot90(image, turns, axes=(-2, -1))
            targets = np.rot90(targets, turns, axes=(-2, -1))
            weight = np.rot90(weight, turns, axes=(-2, -1))
        image = np.array(image, dtype=np.float32)
        if image.shape[0] >= 3 and rng.random() < options.grayscale_probability:
            # Random band weights: a panchromatic band is not exactly the RGB luminance (it sees NIR too).
            mix = rng.dirichlet(np.ones(3) * 4.0).astype(np.float32)
            gray = np.tensordot(mix, image[:3], axes=1)
            if rng.random() < options.pan_like_probability:
                gray = _pan_like(gray, image[:3], float(rng.uniform(0.5, 3.0)))
            image[:3] = gray[None]
        if options.contrast > 0 or options.brightness > 0:
            contrast = 1.0 + rng.uniform(-options.contrast, options.contrast)
            brightness = rng.uniform(-options.brightness, options.brightness)
            mean = image.mean(axis=(-2, -1), keepdims=True)
            image = (image - mean) * contrast + mean + brightness
    return (
        np.ascontiguousarray(image, dtype=np.float32),
        np.ascontiguousarray(targets, dtype=np.float32),
        np.ascontiguousarray(weight, dtype=np.float32),
    )
