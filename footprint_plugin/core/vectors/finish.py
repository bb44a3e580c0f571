"""Finishing polygons: fill holes, simplify, square, map to the CRS, measure, filter, order and attribute."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from ..common.geometry import Metric, largest_polygon, measure
from .options import PolygonOptions
from .pieces import Piece
from .regularize import regularize_polygon


def _fill_small_holes(polygon: Polygon, max_hole_px: float) -> Polygon:
    if max_hole_px <= 0 or not polygon.interiors:
        return polygon
    kept = [ring for ring in polygon.interiors if Polygon(ring).area >= max_hole_px]
    if len(kept) == len(polygon.interiors):
        return polygon
    return Polygon(polygon.exterior, kept)


def _repair(geoms: np.ndarray, where: np.ndarray) -> None:
    """Replace invalid geometries (where True) by the largest polygon of their valid version, or None."""
    for i in np.flatnonzero(where):
        geoms[i] = largest_polygon(shapely.make_valid(geoms[i]))


def _clean(pieces: list[Piece], hole_px: float, tolerance_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(pixel-coordinate geometries, present mask): holes filled, repaired, simplified."""
    geoms = np.array([_fill_small_holes(p.polygon, hole_px) for p in pieces], dtype=object)
    _repair(geoms, ~shapely.is_valid(geoms))
    present = np.array([g is not None for g in geoms])
    geoms = np.where(present, geoms, None)
    # A canonical vertex order makes simplification independent of where a ring happened to start,
    # so a building gives the same outline whether it was polygonized whole or joined across seams.
    geoms[present] = shapely.normalize(shapely.simplify(geoms[present], 0.0))
    if tolerance_px > 0:
        geoms[present] = shapely.simplify(geoms[present], tolerance_px, preserve_topology=True)
    return geoms, present


def _square(geoms: np.ndarray, present: np.ndarray, metric: Metric, tolerance_px: float) -> np.ndarray:
    """Regularize each present outline on the ground (right angles in metres); True where it changed."""
    regularized = np.zeros(len(geoms), bool)
    ja, jb, jd, je = metric.jacobian
    det = ja * je - jb * jd
    to_ground = [ja, jb, jd, je, 0.0, 0.0]
    to_pixels = [je / det, -jb / det, -jd / det, ja / det, 0.0, 0.0]
    tolerance_m = max(tolerance_px, 1.0) * metric.gsd_m
    for i in np.flatnonzero(present):
        ground = shapely.affinity.affine_transform(geoms[i], to_ground)
        squared, regularized[i] = regularize_polygon(ground, tolerance=tolerance_m)
        if regularized[i]:
            geoms[i] = shapely.affinity.affine_transform(squared, to_pixels)
    return regularized


def _to_map(pixel_geoms: np.ndarray, transform) -> np.ndarray:
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    map_geoms = shapely.transform(
        pixel_geoms, lambda xy: np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])
    )
    broken = ~shapely.is_valid(map_geoms)  # float rounding of the affine can pinch a ring
    for k in np.flatnonzero(broken):
        map_geoms[k] = largest_polygon(shapely.make_valid(map_geoms[k])) or Polygon()
    return map_geoms


def _attributes(piece: Piece, area: float, perimeter: float, regularized: bool, source: str, model: str) -> dict:
    return {
        "score": round(piece.prob_sum / piece.pixels, 4) if piece.pixels else 0.0,
        "area_m2": round(area, 2),
        "perimeter_m": round(perimeter, 2),
        "compactness": round(4.0 * math.pi * area / perimeter**2, 4) if perimeter > 0 else 0.0,
        "regularized": bool(regularized),
        "source": source,
        "model": model,
    }


def finish_pieces(
    pieces: list[Piece],
    transform,
    metric: Metric,
    options: PolygonOptions,
    source: str,
    model: str,
) -> tuple[list[BaseGeometry], list[dict[str, Any]]]:
    """Fill holes, simplify, regularize, map to the CRS, measure, filter and order the pieces."""
    if not pieces:
        return [], []
    hole_px = options.hole_area_m2 / metric.gsd_m**2
    tolerance_px = 0.75 if options.simplify_m is None else options.simplify_m / metric.gsd_m
    geoms, present = _clean(pieces, hole_px, tolerance_px)
    regularized = _square(geoms, present, metric, tolerance_px) if options.regularize else np.zeros(len(geoms), bool)
    _repair(geoms, present & ~shapely.is_valid(np.where(present, geoms, Polygon())))
    present = np.array([g is not None and not g.is_empty for g in geoms])
    index = np.flatnonzero(present)
    pixel_geoms = geoms[index]
    map_geoms = _to_map(pixel_geoms, transform)
    area_m2, perimeter_m = measure(map_geoms, metric)
    bounds = shapely.bounds(pixel_geoms)
    order = [
        k
        for k in np.lexsort((area_m2, bounds[:, 0], bounds[:, 1]))
        if area_m2[k] >= options.min_area_m2 and area_m2[k] > 0
    ]
    attributes = [
        _attributes(pieces[index[k]], float(area_m2[k]), float(perimeter_m[k]), regularized[index[k]], source, model)
        for k in order
    ]
    return [map_geoms[k] for k in order], attributes
