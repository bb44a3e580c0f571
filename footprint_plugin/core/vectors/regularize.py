"""Square building outlines: snap edges to the dominant orientation and make corners right angles.

Nearly rectangular outlines become rectangles; other outlines (L, T, U shapes) get axis-parallel
edges in the building's own frame. Round or irregular outlines are left alone, and so is any outline
whose squared version would differ too much from the original (IoU check).
Works in any planar coordinates; `tolerance` is in those units (about one pixel).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from ..common.geometry import largest_polygon

_H, _V, _D = 0, 1, 2


def dominant_orientation(polygon: BaseGeometry, tolerance: float = 0.0) -> tuple[float, float]:
    """(angle in radians in (-pi/4, pi/4], strength 0..1) of the exterior's edges, modulo 90 degrees.

    Strength is 1 when every edge is parallel or perpendicular to the angle and near 0 for round shapes.
    Edge angles are multiplied by four so that directions 90 degrees apart vote for the same axis.
    """
    if polygon.is_empty:
        return 0.0, 0.0
    ring = polygon.exterior if polygon.geom_type == "Polygon" else max(polygon.geoms, key=lambda g: g.area).exterior
    if tolerance > 0:
        ring = ring.simplify(tolerance)
    coords = np.asarray(ring.coords)
    deltas = np.diff(coords, axis=0)
    lengths = np.hypot(deltas[:, 0], deltas[:, 1])
    total = lengths.sum()
    if total <= 0:
        return 0.0, 0.0
    angles = np.arctan2(deltas[:, 1], deltas[:, 0])
    c = float(np.sum(lengths * np.cos(4 * angles)))
    s = float(np.sum(lengths * np.sin(4 * angles)))
    return math.atan2(s, c) / 4.0, math.hypot(c, s) / total


def _classify(deltas: np.ndarray, axis_tolerance: float) -> np.ndarray:
    angles = np.degrees(np.arctan2(deltas[:, 1], deltas[:, 0])) % 180.0
    classes = np.full(len(deltas), _D, dtype=np.int8)
    classes[(angles <= axis_tolerance) | (angles >= 180.0 - axis_tolerance)] = _H
    classes[np.abs(angles - 90.0) <= axis_tolerance] = _V
    return classes


def _orthogonalize_ring(coords: np.ndarray, axis_tolerance: float, min_diagonal: float) -> Optional[np.ndarray]:
    """Snap a ring (already rotated to its dominant frame) to horizontal/vertical lines.

    Runs of near-horizontal (near-vertical) edges become one line at their length-weighted mean height
    (position); corners are where consecutive lines meet. Diagonal edges shorter than min_diagonal are
    clipped corners or noise and are dropped; longer ones stay as they are.
    """
    points = coords[:-1] if np.allclose(coords[0], coords[-1]) else coords
    n = len(points)
    if n < 3:
        return None
    deltas = np.roll(points, -1, axis=0) - points
    lengths = np.hypot(deltas[:, 0], deltas[:, 1])
    classes = _classify(deltas, axis_tolerance)
    kept = np.flatnonzero(~((classes == _D) & (lengths < min_diagonal)))
    runs: list[list] = []  # [class, member edge indices]
    for edge in kept.tolist():
        cls = int(classes[edge])
        if runs and cls != _D and runs[-1][0] == cls:
            runs[-1][1].append(edge)
        else:
            runs.append([cls, [edge]])
    if len(runs) > 1 and runs[0][0] == runs[-1][0] != _D:
        runs[0][1] = runs.pop()[1] + runs[0][1]
    if len(runs) < 3:
        return None
    values = []
    for cls, members in runs:
        weights = lengths[members]
        mids = points[members] + deltas[members] / 2.0
        axis = 1 if cls == _H else 0
        values.append(float(np.average(mids[:, axis], weights=weights)) if weights.sum() > 0 else float(mids[0, axis]))
    vertices = []
    for index, (cls_b, members_b) in enumerate(runs):
        cls_a, members_a = runs[index - 1]
        value_a, value_b = values[index - 1], values[index]
        corner = points[(members_a[-1] + 1) % n] if cls_a == _D else points[members_b[0]]
        x, y = float(corner[0]), float(corner[1])
        for cls, value in ((cls_a, value_a), (cls_b, value_b)):
            if cls == _H:
                y = value
            elif cls == _V:
                x = value
        vertices.append((x, y))
    vertices.append(vertices[0])
    return np.asarray(vertices)


def _iou(a: BaseGeometry, b: BaseGeometry) -> float:
    union = a.union(b).area
    return a.intersection(b).area / union if union > 0 else 0.0


def _rectangle(upright: Polygon, rectangle_fill: float) -> Optional[Polygon]:
    """The bounding box of an upright outline that fills it well enough, shrunk to the outline's area; else None."""
    minx, miny, maxx, maxy = upright.bounds
    box_area = (maxx - minx) * (maxy - miny)
    if box_area <= 0 or upright.area / box_area < rectangle_fill:
        return None
    # Pixel staircases make the box slightly too big; scale it back to the outline's area.
    factor = math.sqrt(upright.area / box_area)
    cx, cy = (minx + maxx) / 2.0, (miny + maxy) / 2.0
    hw, hh = (maxx - minx) / 2.0 * factor, (maxy - miny) / 2.0 * factor
    return shapely.box(cx - hw, cy - hh, cx + hw, cy + hh)


def _orthogonal(upright: Polygon, area: float, tolerance: float, axis_tolerance_deg: float) -> Optional[BaseGeometry]:
    """An upright outline (and its holes) with axis-parallel edges, or None when it cannot be squared."""
    simplified = largest_polygon(upright.simplify(1.5 * tolerance, preserve_topology=True))
    if simplified is None:
        return None
    # Short diagonals are rounded corners or noise; what counts as short grows with the building.
    min_diagonal = max(6.0 * tolerance, 0.15 * math.sqrt(area))
    exterior = _orthogonalize_ring(np.asarray(simplified.exterior.coords), axis_tolerance_deg, min_diagonal)
    if exterior is None or len(exterior) < 4:
        return None
    holes = []
    for interior in simplified.interiors:
        ring = _orthogonalize_ring(np.asarray(interior.coords), axis_tolerance_deg, min_diagonal)
        if ring is not None and len(ring) >= 4:
            holes.append(ring)
    candidate = shapely.simplify(Polygon(exterior, holes), 0.0)  # drop collinear vertices
    return candidate if candidate.is_valid else largest_polygon(shapely.make_valid(candidate))


def _regularize_parts(polygon: BaseGeometry, **options: float) -> tuple[BaseGeometry, bool]:
    """Square each part of a MultiPolygon; keep the original when none changed or squared parts overlap."""
    results = [regularize_polygon(part, **options) for part in polygon.geoms]
    if not any(changed for _, changed in results):
        return polygon, False
    multi = shapely.MultiPolygon([part for part, _ in results])
    if not multi.is_valid:  # squared parts that now overlap: keep the original rather than merge buildings
        return polygon, False
    return multi, True


def regularize_polygon(
    polygon: BaseGeometry,
    tolerance: float = 1.0,
    min_iou: float = 0.8,
    rectangle_fill: float = 0.85,
    min_strength: float = 0.45,
    axis_tolerance_deg: float = 25.0,
) -> tuple[BaseGeometry, bool]:
    """Return (squared polygon, True) or (the original, False) when squaring would mangle it.

    tolerance: simplification before squaring, in coordinate units (about one pixel).
    rectangle_fill: area / oriented-bounding-box area above which the outline becomes that rectangle.
    min_strength: below this orientation strength (round or irregular shapes) nothing is changed.
    """
    if polygon is not None and polygon.geom_type == "MultiPolygon":
        return _regularize_parts(
            polygon,
            tolerance=tolerance,
            min_iou=min_iou,
            rectangle_fill=rectangle_fill,
            min_strength=min_strength,
            axis_tolerance_deg=axis_tolerance_deg,
        )
    shape = largest_polygon(polygon)
    if shape is None or not shape.is_valid or shape.area <= 0:
        return polygon, False
    # Pixel staircases survive a one-pixel simplification at angles far from 45 degrees; two pixels remove them.
    angle, strength = dominant_orientation(shape, 2.0 * tolerance)
    if strength < min_strength:
        return polygon, False
    origin = shape.centroid
    upright = affinity.rotate(shape, -angle, origin=origin, use_radians=True)
    candidate = _rectangle(upright, rectangle_fill)
    if candidate is None:
        candidate = _orthogonal(upright, shape.area, tolerance, axis_tolerance_deg)
    if candidate is None or candidate.is_empty:
        return polygon, False
    candidate = affinity.rotate(candidate, angle, origin=origin, use_radians=True)
    candidate = largest_polygon(candidate if candidate.is_valid else shapely.make_valid(candidate))
    if candidate is None or _iou(candidate, shape) < min_iou:
        return polygon, False
    return candidate, True
