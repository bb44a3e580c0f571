"""Fit a pretrained RGB input convolution to any band count."""

from __future__ import annotations

import torch


def adapt_input_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB conv weight (out, 3, k, k) turned into (out, in_channels, k, k).

    One band (panchromatic, SAR): the RGB filters summed, i.e. their average scaled by 3, so a gray
    image gives the same response as before. Two or more bands: the RGB filters repeated cyclically
    and rescaled by 3 / in_channels; when the band count is not a multiple of 3, a uniform
    per-filter correction restores the RGB sum, so an image whose bands are equal keeps the
    pretrained response in every case.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, not {in_channels}")
    rgb = weight.shape[1]
    if in_channels == rgb:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % rgb
    adapted = weight[:, index] * (rgb / in_channels)
    correction = (weight.sum(dim=1, keepdim=True) - adapted.sum(dim=1, keepdim=True)) / in_channels
    return adapted + correction
