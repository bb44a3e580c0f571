"""Training labels: read building polygons in the raster's CRS and burn them into training targets.

Targets are rasterised in pixel space, so widths given in metres work for any CRS (even degrees):
  footprint  inside a building,
  boundary   a band of `boundary_width_m` centred on each outline,
  contact    background pixels close to two or more buildings (the gaps a model must keep open).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import shapely
from affine import Affine
from shapely.geometry.base import BaseGeometry

from ..common.errors import InputError
from ..io.vector_io import read_polygons

HEADS_SINGLE = ("footprint",)
HEADS_TRIPLE = ("footprint", "boundary", "contact")


@dataclass
class LabelSet:
    """Building polygons of one label file, valid and in the raster's CRS."""

    source: Path
    geometries: list[BaseGeometry]
    n_fixed: int = 0
    n_dropped: int = 0
    warnings: list[str] = field(default_factory=list)


def heads_for(count: int) -> tuple[str, ...]:
    """Head names for 1 or 3 output channels."""
    if count == 1:
        return HEADS_SINGLE
    if count == 3:
        return HEADS_TRIPLE
    raise InputError(f"heads must be 1 (footprint) or 3 (footprint, boundary, contact), not {count}.")


def load_labels(path: Path | str, crs_wkt: Optional[str]) -> LabelSet:
    """Read building polygons, reprojected to crs_wkt and made valid; an empty layer is an error."""
    path = Path(path)
    data = read_polygons(path, target_crs_wkt=crs_wkt)
    if not data.geometries:
        raise InputError(
            f"The label layer {path} has no building polygons"
            + (f" ({data.n_dropped} features had empty or non-polygon geometry)" if data.n_dropped else "")
            + ". Digitize buildings as polygons, or pick the layer that holds them."
        )
    return LabelSet(path, list(data.geometries), data.n_fixed, data.n_dropped, list(data.warnings))


def load_aoi(path: Path | str, crs_wkt: Optional[str]) -> list[BaseGeometry]:
    """Read the area-of-interest polygons (where labels are complete) in crs_wkt."""
    path = Path(path)
    data = read_polygons(path, target_crs_wkt=crs_wkt)
    if not data.geometries:
        raise InputError(
            f"The area-of-interest layer {path} has no polygons. Draw the area where every building is labelled."
        )
    return list(data.geometries)


def to_pixel_space(geometries: Sequence[BaseGeometry], transform: Affine) -> list[BaseGeometry]:
    """Map geometries from CRS coordinates to (col, row) pixel coordinates of `transform`."""
    inverse = ~transform
    matrix = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f]
    return [shapely.affinity.affine_transform(g, matrix) for g in geometries]


def _burn(shapes: Sequence[BaseGeometry], shape: tuple[int, int], add: bool = False) -> np.ndarray:
    from rasterio.features import MergeAlg, rasterize

    shapes = [g for g in shapes if g is not None and not g.is_empty]
    if not shapes:
        return np.zeros(shape, np.uint8)
    return rasterize(
        ((g, 1) for g in shapes),
        out_shape=shape,
        transform=Affine.identity(),
        fill=0,
        dtype="uint8",
        merge_alg=MergeAlg.add if add else MergeAlg.replace,
    )


def rasterize_targets(
    geometries: Sequence[BaseGeometry],
    transform: Affine,
    shape: tuple[int, int],
    heads: Sequence[str],
    pixel_size_m: float,
    boundary_width_m: float = 1.0,
    contact_gap_m: float = 2.0,
) -> np.ndarray:
    """Burn polygons (raster CRS) into a (len(heads), rows, cols) uint8 0/1 array."""
    pixel_geoms = [g for g in to_pixel_space(geometries, transform) if not g.is_empty]
    footprint = _burn(pixel_geoms, shape)
    layers = []
    for head in heads:
        if head == "footprint":
            layers.append(footprint)
        elif head == "boundary":
            half_width = max(boundary_width_m / pixel_size_m / 2.0, 0.5)
            layers.append(_burn([g.boundary.buffer(half_width) for g in pixel_geoms], shape))
        elif head == "contact":
            # Each building grown by half the gap: where two grown buildings overlap on background, they nearly touch.
            grow = max(contact_gap_m / pixel_size_m / 2.0, 1.0)
            overlap_count = _burn([g.buffer(grow) for g in pixel_geoms], shape, add=True)
            layers.append(((overlap_count >= 2) & (footprint == 0)).astype(np.uint8))
        else:
            raise InputError(f"Unknown head '{head}'. Use footprint, boundary or contact.")
    return np.stack(layers)


def rasterize_region(geometries: Sequence[BaseGeometry], transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the pixels inside any of the polygons (e.g. the area of interest)."""
    return _burn(to_pixel_space(geometries, transform), shape).astype(bool)


def clip_ground_truth(
    geometries: Sequence[BaseGeometry],
    transform: Affine,
    valid: np.ndarray,
    min_inside_fraction: float = 0.5,
) -> list[BaseGeometry]:
    """Buildings to score against: those mostly on valid pixels of this raster (by pixel count)."""
    kept = buildings_on_valid_pixels(geometries, transform, valid, min_inside_fraction)
    if not kept:
        return kept
    # Predictions stop where the imagery stops, so cut the kept buildings there too (as SpaceNet's per-tile labels are).
    region = valid_region(valid, transform)
    clipped = [g.intersection(region) for g in kept]
    return [g for g in clipped if not g.is_empty and g.area > 0]


def buildings_on_valid_pixels(
    geometries: Sequence[BaseGeometry],
    transform: Affine,
    valid: np.ndarray,
    min_inside_fraction: float = 0.5,
) -> list[BaseGeometry]:
    """The buildings with at least min_inside_fraction of their area on valid pixels, uncut (cheap: no polygonising)."""
    from rasterio.features import rasterize

    rows, cols = valid.shape
    pixel_geoms = to_pixel_space(geometries, transform)
    frame = shapely.box(0, 0, cols, rows)
    keep_indices = [i for i, g in enumerate(pixel_geoms) if not g.is_empty and g.intersects(frame)]
    if not keep_indices:
        return []
    ids = rasterize(
        ((pixel_geoms[i], n + 1) for n, i in enumerate(keep_indices)),
        out_shape=valid.shape,
        transform=Affine.identity(),
        fill=0,
        dtype="int32",
    )
    inside_counts = np.bincount(ids[valid].ravel(), minlength=len(keep_indices) + 1)
    kept = []
    for n, i in enumerate(keep_indices):
        full_area_px = pixel_geoms[i].area
        if full_area_px > 0 and inside_counts[n + 1] >= min_inside_fraction * full_area_px:
            kept.append(geometries[i])
    return kept


def valid_region(valid: np.ndarray, transform: Affine) -> BaseGeometry:
    """The valid pixels as one (multi)polygon in CRS coordinates."""
    from rasterio.features import shapes

    if valid.all():
        rows, cols = valid.shape
        return shapely.box(*shapely.bounds(shapely.MultiPoint([transform * (0, 0), transform * (cols, rows)])))
    parts = [
        shapely.geometry.shape(geom)
        for geom, value in shapes(valid.astype(np.uint8), mask=valid, transform=transform)
        if value
    ]
    return shapely.union_all(parts) if parts else shapely.Polygon()
