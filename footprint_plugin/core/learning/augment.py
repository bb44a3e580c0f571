"""Chip augmentation, driven by a seeded numpy Generator so training is reproducible.

EO: flips, 90-degree rotations, brightness/contrast, small scale jitter (done by the sampler's
window size, then resized here), roof recolouring, sensor blur and grayscale, so a model trained on
RGB also reads panchromatic imagery (which inference feeds as the pan band repeated in every channel).
Roof recolouring gives each labelled building a random brightness and tint: the training areas
have mostly bright concrete and metal roofs, and a model that learns "bright = building" misses
the dark shingle roofs of North American suburbs and marks their bright driveways instead.
SAR: left-right flip only. Rotating or mirroring top-bottom would put the radar shadow and
layover on the wrong side of buildings relative to the look direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Names users pick (TrainingConfig.augmentation, --augmentation, the AUGMENTATION parameter). torch is
# imported inside the functions that need it, so the plugin can list these without torch installed.
POLICIES = ("standard", "robust", "panchromatic")


@dataclass
class AugmentOptions:
    sensor: str = "EO"
    brightness: float = 0.15  # added offset, in scaled (0..1) units
    contrast: float = 0.25  # multiplicative, 1 +/- this
    grayscale_probability: float = 0.3
    # Of the grayscale chips, the share made to look like a satellite panchromatic band (bright vegetation).
    pan_like_probability: float = 0.6
    scale_jitter: float = 0.15  # log-scale range of the sampler's window size
    roof_recolor_probability: float = 0.0  # share of chips whose buildings get a random brightness/tint
    roof_gain_range: tuple[float, float] = (0.3, 1.3)
    blur_probability: float = 0.0  # share of chips blurred like a satellite sensor's point-spread function
    blur_sigma_range: tuple[float, float] = (0.4, 1.2)  # pixels

    @classmethod
    def for_policy(cls, sensor: str, policy: str = "standard") -> AugmentOptions:
        """The options of a named policy. SAR always gets its own (left-right flip only)."""
        if policy not in POLICIES:
            raise ValueError(f"Unknown augmentation {policy!r}; choose one of {', '.join(POLICIES)}.")
        if sensor == "SAR":
            return cls(sensor="SAR", brightness=0.0, contrast=0.0, grayscale_probability=0.0, scale_jitter=0.0)
        if policy == "standard":
            return cls(sensor="EO")
        # robust: breaks the "bright = building" shortcut; panchromatic: the same, leaning on gray input.
        pan = policy == "panchromatic"
        return cls(
            sensor="EO",
            grayscale_probability=0.7 if pan else 0.45,
            pan_like_probability=0.8 if pan else 0.7,
            roof_recolor_probability=0.4,
            roof_gain_range=(0.2, 1.2) if pan else (0.3, 1.3),
            blur_probability=0.3,
        )


def resize_chip(
    image: np.ndarray, targets: np.ndarray, weight: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize a (scale-jittered) window to the chip size: bilinear image, nearest targets and weight."""
    if image.shape[-1] == size:
        return image, targets, weight
    import torch
    from torch.nn import functional

    img = functional.interpolate(
        torch.from_numpy(image)[None], size=(size, size), mode="bilinear", align_corners=False
    )[0]
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


def recolor_roofs(
    image: np.ndarray, footprint: np.ndarray, rng: np.random.Generator, gain_range: tuple[float, float]
) -> np.ndarray:
    """Give every building of the chip its own brightness and tint, with a one-pixel soft edge.

    The soft edge keeps the network from learning that a building ends at a perfectly sharp step.
    """
    from scipy import ndimage

    buildings = footprint > 0.5
    labels, count = ndimage.label(buildings)
    if count == 0:
        return image
    gains = rng.uniform(gain_range[0], gain_range[1], size=count + 1).astype(np.float32)
    tints = rng.normal(1.0, 0.08, size=(count + 1, image.shape[0])).astype(np.float32)
    gains[0], tints[0] = 1.0, 1.0  # label 0 is the background
    per_pixel = gains[labels][None] * np.moveaxis(tints[labels], -1, 0)  # (C, S, S)
    softness = ndimage.uniform_filter(buildings.astype(np.float32), size=3)[None]
    return np.clip(image * (1.0 + softness * (per_pixel - 1.0)), 0.0, 1.0).astype(np.float32)


def blur_chip(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(image, sigma=(0, sigma, sigma)).astype(np.float32)


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
        if options.roof_recolor_probability and rng.random() < options.roof_recolor_probability:
            image = recolor_roofs(image, np.asarray(targets[0]), rng, options.roof_gain_range)
        if options.blur_probability and rng.random() < options.blur_probability:
            image = blur_chip(image, float(rng.uniform(*options.blur_sigma_range)))
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
