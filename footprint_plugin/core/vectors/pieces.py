"""Polygonizing label blocks into pieces, and joining the pieces of buildings cut by block seams.

Pieces are built in global pixel coordinates, which are exact integers in every block, so pieces of a building
cut by a block seam join exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import shapely
from shapely.geometry import Polygon


@dataclass
class Piece:
    polygon: Polygon  # global pixel coordinates
    prob_sum: float
    pixels: int
    block: int = -1  # pieces of one block never join: a shared edge there is a watershed line


def shapes_to_polygons(
    labels: np.ndarray, row0: int, col0: int, inside: Optional[np.ndarray] = None
) -> tuple[list[Polygon], np.ndarray]:
    """GDAL polygonize (4-connected) of a label block, in global pixel coordinates. inside: labels > 0."""
    from itertools import chain

    from rasterio.features import shapes
    from rasterio.transform import Affine

    rings_list, values = [], []
    inside = labels > 0 if inside is None else inside
    for geojson, value in shapes(labels, mask=inside, connectivity=4, transform=Affine.translation(col0, row0)):
        rings_list.append(geojson["coordinates"])
        values.append(int(value))
    polygons: list = [None] * len(rings_list)
    # Most buildings have no holes: build those in one vectorized call instead of one by one.
    simple = [i for i, rings in enumerate(rings_list) if len(rings) == 1]
    if simple:
        exteriors = [rings_list[i][0] for i in simple]
        lengths = np.fromiter((len(ring) for ring in exteriors), np.int64, len(exteriors))
        flat = np.fromiter(chain.from_iterable(chain.from_iterable(exteriors)), np.float64, int(lengths.sum()) * 2)
        rings = shapely.linearrings(flat.reshape(-1, 2), indices=np.repeat(np.arange(len(exteriors)), lengths))
        for i, polygon in zip(simple, shapely.polygons(rings)):
            polygons[i] = polygon
    for i, rings in enumerate(rings_list):
        if polygons[i] is None:
            polygons[i] = Polygon(rings[0], rings[1:])
    return polygons, np.asarray(values, dtype=np.int64)


def block_pieces(
    labels: np.ndarray,
    footprint: np.ndarray,
    row0: int,
    col0: int,
    seams: tuple[bool, bool, bool, bool],
    min_pixels: float,
    block: int = -1,
) -> tuple[list[Piece], list[Piece]]:
    """(finished pieces, pieces touching an inner seam) of one block's core."""
    n = int(labels.max()) + 1 if labels.size else 1
    # Only labelled pixels matter, and they are never NaN: skip the background (most of the block).
    inside = labels > 0
    inside_labels = labels[inside]
    pixels = np.bincount(inside_labels, minlength=n)
    prob_sum = np.bincount(inside_labels, weights=footprint[inside], minlength=n)
    on_seam = np.zeros(n, bool)
    top, bottom, left, right = seams
    for present, edge in ((top, labels[0, :]), (bottom, labels[-1, :]), (left, labels[:, 0]), (right, labels[:, -1])):
        if present:
            on_seam[edge] = True
    on_seam[0] = False
    # Speckle is dropped before polygonizing (cheap); seam pieces may still grow, so they stay.
    keep = (pixels >= min_pixels) | on_seam
    keep[0] = False
    if not keep[1:].all():
        labels = np.where(keep[labels], labels, 0).astype(np.int32)
        inside = labels > 0
    polygons, values = shapes_to_polygons(labels, row0, col0, inside)
    done, pending = [], []
    for polygon, value in zip(polygons, values):
        piece = Piece(polygon, float(prob_sum[value]), int(pixels[value]), block)
        (pending if on_seam[value] else done).append(piece)
    return done, pending


def _seam_join(a: Polygon, b: Polygon, split: str) -> bool:
    """Whether two seam pieces from different blocks are one building (see merge_seam_pieces)."""
    line = shapely.intersection(a.boundary, b.boundary)
    shared = line.length
    if shared <= 0:
        return False  # corner contact: separate 4-connected components
    if split == "none":
        return True
    x0, y0, x1, y1 = line.bounds
    if x0 == x1:
        seam = shapely.LineString([(x0, -1e12), (x0, 1e12)])
    elif y0 == y1:
        seam = shapely.LineString([(-1e12, y0), (1e12, y0)])
    else:
        return True
    on_a = shapely.intersection(a.boundary, seam).length
    on_b = shapely.intersection(b.boundary, seam).length
    return shared >= 0.5 * min(on_a, on_b)


def _union_pieces(pieces: list[Piece]) -> list[Piece]:
    """One piece per polygon of the union, sharing out the probability sum and pixels by area."""
    if len(pieces) == 1:
        return pieces
    union = shapely.union_all([piece.polygon for piece in pieces])
    parts = list(union.geoms) if union.geom_type == "MultiPolygon" else [union]
    total_sum = sum(piece.prob_sum for piece in pieces)
    total_pixels = sum(piece.pixels for piece in pieces)
    merged = []
    for part in parts:
        share = part.area / union.area if union.area > 0 else 1.0 / len(parts)
        merged.append(Piece(part, total_sum * share, max(1, round(total_pixels * share))))
    return merged


def merge_seam_pieces(pending: list[Piece], split: str) -> list[Piece]:
    """Join pieces cut by block seams into whole buildings.

    Without splitting, pieces sharing any edge are one connected component, exactly as in a whole-raster
    run. With watershed splitting, neighbouring blocks may place a dividing line a pixel apart, so pieces
    join only when they share at least half of the shorter one's seam edge.
    """
    if len(pending) < 2:
        return pending
    tree = shapely.STRtree([p.polygon for p in pending])
    left, right = tree.query([p.polygon for p in pending], predicate="touches")
    parent = list(range(len(pending)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(left.tolist(), right.tolist()):
        if i < j and pending[i].block != pending[j].block and _seam_join(pending[i].polygon, pending[j].polygon, split):
            parent[find(i)] = find(j)
    groups: dict[int, list[Piece]] = {}
    for i, piece in enumerate(pending):
        groups.setdefault(find(i), []).append(piece)
    return [merged for members in groups.values() for merged in _union_pieces(members)]
