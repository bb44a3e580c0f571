"""Probabilities -> building instances (int32 labels) for one block: threshold, seeds, growth, split and merge.

One roof should give one instance. With boundary/contact heads the seeded watershed floods from confident roof
cores; growing the seeds down to a lower footprint threshold restores roofs the 0.5 mask cut short, and pieces of
one roof that a ridge line or a dark patch separated merge again unless the contact head marks their border as
two roofs touching.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..common.errors import InputError
from .options import PolygonOptions

GROW_MIN_CORE = 0.5  # a grown region is kept when its confident core holds this share of the minimum area


Elevation = Callable[[tuple[slice, slice]], np.ndarray]  # flooding elevation of one window of the block


def head_index(heads: Sequence[str], name: str) -> Optional[int]:
    return list(heads).index(name) if name in heads else None


def resolve_split(split: str, heads: Sequence[str]) -> str:
    """The split method actually used for these heads."""
    has_edges = "boundary" in heads or "contact" in heads
    if split == "auto":
        return "watershed" if has_edges else "none"
    if split == "watershed" and not has_edges:
        raise InputError(
            "Watershed splitting needs a model with boundary/contact outputs; this probability raster has only "
            f"{', '.join(heads)}. Use split 'distance' or 'none'."
        )
    return split


def label_instances(
    prob: np.ndarray,
    valid: Optional[np.ndarray],
    heads: Sequence[str],
    options: PolygonOptions,
    split: str,
    gsd_m: float,
) -> np.ndarray:
    """int32 instance labels (0 = background) for one block of probabilities (heads, H, W).

    valid (True = data) may be None when nodata is only marked by NaN, which never passes the threshold.
    """
    from scipy import ndimage

    footprint = prob[head_index(heads, "footprint") or 0]
    with np.errstate(invalid="ignore"):
        mask = footprint >= options.threshold
        if split == "watershed" and options.grow_threshold is not None:
            region = footprint >= options.grow_threshold
        else:
            region = mask
    if valid is not None:
        mask &= valid
        region = region & valid if region is not mask else mask
    components, count = ndimage.label(region)
    if region is not mask and count:
        # A grown region is a building only where it holds some of the confident mask.
        core_px = np.bincount(components[mask], minlength=count + 1)
        has_core = core_px >= max(1.0, GROW_MIN_CORE * options.min_area_m2 / gsd_m**2)
        has_core[0] = False
        components = np.where(has_core[components], components, 0).astype(np.int32)
    if split == "none" or count == 0:
        return components
    if split == "watershed":
        seeds, elevation = _edge_seeds(prob, heads, footprint, components > 0, options)
        limits = _merge_limits(prob, heads, options)
    else:
        seeds, elevation = _distance_seeds(components, count, options)
        limits = []
    return _flood_split(components, count, seeds, elevation, limits, options.min_seed_m2 / gsd_m**2)


def _merge_limits(prob: np.ndarray, heads: Sequence[str], options: PolygonOptions) -> list[tuple[np.ndarray, float]]:
    """(head, largest mean on a border that still joins two pieces) for each edge head that decides merging."""
    limits = []
    for name, limit in (("contact", options.merge_max_contact), ("boundary", options.merge_max_boundary)):
        index = head_index(heads, name)
        if limit is not None and index is not None:
            limits.append((prob[index], limit))
    if options.merge_max_contact is not None and head_index(heads, "contact") is None:
        return []  # without a contact head nothing says where two roofs touch: never merge
    return limits


def _edge_seeds(
    prob: np.ndarray, heads: Sequence[str], footprint: np.ndarray, inside: np.ndarray, options: PolygonOptions
) -> tuple[np.ndarray, Elevation]:
    """(seeds, flooding elevation of a window) from the boundary/contact heads."""
    edges = [prob[i] for i in (head_index(heads, "boundary"), head_index(heads, "contact")) if i is not None]
    edge = np.maximum.reduce(edges) if len(edges) > 1 else edges[0]
    with np.errstate(invalid="ignore"):
        seeds = inside & (footprint >= options.seed_threshold) & (edge < options.seed_max_edge)

    def elevation(window: tuple[slice, slice]) -> np.ndarray:
        # Computed per window: only the few components that split need it, not the whole block.
        return (1.0 - footprint[window]) + sum(e[window] for e in edges)

    return seeds, elevation


def _distance_seeds(components: np.ndarray, count: int, options: PolygonOptions) -> tuple[np.ndarray, Elevation]:
    """(seeds, elevation) of the distance split: the thick middle of each component."""
    from scipy import ndimage

    mask = components > 0
    distance = ndimage.distance_transform_edt(mask).astype(np.float32)
    peak = np.zeros(count + 1, np.float32)
    peak[1:] = ndimage.maximum(distance, components, index=np.arange(1, count + 1))
    seeds = mask & (distance >= options.distance_seed_fraction * peak[components]) & (distance >= 1.5)
    return seeds, lambda window: -distance[window]


def _flood_split(
    components: np.ndarray,
    count: int,
    seeds: np.ndarray,
    elevation: Elevation,
    limits: list[tuple[np.ndarray, float]],
    min_seed_px: float,
) -> np.ndarray:
    """Split each component holding two or more good seeds by a seeded watershed, in its own window only."""
    from scipy import ndimage

    markers, n_markers = ndimage.label(seeds)
    if n_markers < 2:
        return components
    sizes = np.bincount(markers.ravel(), minlength=n_markers + 1)
    # Component of each marker: markers lie inside the components, so any of their pixels tells.
    marker_component = np.zeros(n_markers + 1, np.int64)
    seeded = markers > 0
    marker_component[markers[seeded]] = components[seeded]
    good = sizes >= max(1.0, min_seed_px)
    good[0] = False
    seeds_per_component = np.bincount(marker_component[good], minlength=count + 1)
    to_split = np.flatnonzero(seeds_per_component >= 2)
    if len(to_split) == 0:
        return components
    from skimage.segmentation import watershed

    labels = components.astype(np.int32, copy=True)
    next_label = count + 1
    slices = ndimage.find_objects(components)
    for component in to_split:
        window = slices[component - 1]
        inside = components[window] == component
        local_markers = np.where(inside & good[markers[window]], markers[window], 0)
        flooded = watershed(elevation(window), local_markers, mask=inside)
        if limits:
            flooded = merge_pieces(flooded, [(head[window], limit) for head, limit in limits])
        values = np.unique(flooded[inside])
        values = values[values > 0]
        lookup = np.zeros(int(flooded.max()) + 1, np.int32)
        lookup[values] = np.arange(next_label, next_label + len(values), dtype=np.int32)
        next_label += len(values)
        region = labels[window]
        region[inside] = lookup[flooded[inside]]
    return labels


MIN_BORDER_FRACTION = 0.5  # pieces of one roof share a long border; two houses joined by a bridge a short one


def merge_pieces(labels: np.ndarray, limits: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Join neighbouring labels whose shared border has, for every (head, limit), a mean head value below limit.

    The border is every pair of 4-neighbour pixels with two different labels; its value is the larger of the
    two pixels'. Only borders at least MIN_BORDER_FRACTION x the smaller piece's width (square root of its
    area) join. Labels are relabelled to the smallest label of their group.
    """
    stride = int(labels.max()) + 1
    codes, values = [], []
    for a, b, first, second in (
        (labels[:, :-1], labels[:, 1:], np.s_[:, :-1], np.s_[:, 1:]),
        (labels[:-1, :], labels[1:, :], np.s_[:-1, :], np.s_[1:, :]),
    ):
        border = (a != b) & (a > 0) & (b > 0)
        if border.any():
            codes.append(np.minimum(a[border], b[border]).astype(np.int64) * stride + np.maximum(a[border], b[border]))
            values.append([np.maximum(head[first][border], head[second][border]) for head, _limit in limits])
    if not codes:
        return labels
    pairs, inverse = np.unique(np.concatenate(codes), return_inverse=True)
    border_px = np.bincount(inverse)
    piece_px = np.bincount(labels.ravel(), minlength=stride)
    smaller = np.minimum(piece_px[pairs // stride], piece_px[pairs % stride])
    joins = border_px >= MIN_BORDER_FRACTION * np.sqrt(smaller)
    for k, (_head, limit) in enumerate(limits):
        border_values = np.nan_to_num(np.concatenate([v[k] for v in values]), nan=1.0)
        joins &= np.bincount(inverse, weights=border_values) / border_px < limit
    parent = np.arange(stride)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for code in pairs[joins].tolist():
        a, b = find(code // stride), find(code % stride)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([find(i) for i in range(len(parent))])
    return roots[labels].astype(labels.dtype, copy=False)
