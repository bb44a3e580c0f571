"""Probabilities -> building polygons: threshold, split touching buildings, polygonize, clean, attributes.

Rasters stream through block by block (with an overlap read around each block so the watershed
sees its neighbours). Polygons are built in global pixel coordinates, which are exact integers in
every block, so pieces of a building cut by a block seam join exactly; they are mapped to the
raster's CRS only at the end. Area and perimeter are measured in metres, in a local UTM zone
when the raster CRS is geographic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled
from ..common.errors import InputError
from ..common.geometry import Metric, largest_polygon, measure, metric_for
from ..common.vocabulary import BUILDING_FIELDS, DEFAULT_MIN_AREA_M2
from ..io.raster_io import HEADS_TAG  # the probability raster format is raster_io's
from .regularize import regularize_polygon

DEFAULT_HEADS = ("footprint", "boundary", "contact")
SPLIT_MODES = ("auto", "watershed", "distance", "none")


@dataclass
class PolygonOptions:
    """How probabilities become polygons. Areas in m², lengths in metres."""

    threshold: float = 0.5
    min_area_m2: float = DEFAULT_MIN_AREA_M2
    hole_area_m2: float = 10.0  # fill holes smaller than this
    simplify_m: Optional[float] = None  # None -> 0.75 pixel, enough to remove pixel staircases
    regularize: bool = False
    split: str = "auto"  # auto (watershed when boundary/contact heads exist, else none) | watershed | distance | none
    block_size: int = 2048  # streamed processing block (pixels); seam-crossing buildings are merged
    overlap: int = 128  # context read around each block for the watershed, pixels
    seed_threshold: float = 0.7  # watershed seeds: footprint at least this ...
    seed_max_edge: float = 0.4  # ... and boundary/contact below this
    min_seed_m2: float = 2.0  # smaller seeds would over-split buildings
    distance_seed_fraction: float = 0.5  # distance split: seed where distance >= this x the component's maximum

    def validate(self) -> None:
        problems = []
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"threshold must be between 0 and 1 (exclusive), not {self.threshold}")
        if self.min_area_m2 < 0 or self.hole_area_m2 < 0:
            problems.append("minimum area and hole area must be >= 0")
        if self.simplify_m is not None and self.simplify_m < 0:
            problems.append("simplify_m must be >= 0 or None (automatic)")
        if self.split not in SPLIT_MODES:
            problems.append(f"split must be one of {', '.join(SPLIT_MODES)}, not {self.split!r}")
        if self.block_size < 64 or self.overlap < 0:
            problems.append("block_size must be >= 64 pixels and overlap >= 0")
        if problems:
            raise InputError("Invalid polygon options: " + "; ".join(problems) + ".")


@dataclass
class PolygonResult:
    """Building polygons in the raster's CRS with one attribute dict (BUILDING_FIELDS) per polygon.

    Buildings come in reading order (top to bottom, then left to right); written layers number them
    1..n through their own key (GeoPackage fid), so the attributes carry no id of their own.
    """

    geometries: list[BaseGeometry]
    attributes: list[dict[str, Any]]
    crs_wkt: Optional[str]
    gsd_m: float
    warnings: list[str] = field(default_factory=list)
    megapixels: float = 0.0
    seconds: float = 0.0


# --------------------------------------------------------------------------- instances per block


def _head_index(heads: Sequence[str], name: str) -> Optional[int]:
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

    footprint = prob[_head_index(heads, "footprint") or 0]
    with np.errstate(invalid="ignore"):
        mask = footprint >= options.threshold
    if valid is not None:
        mask &= valid
    components, count = ndimage.label(mask)
    if split == "none" or count == 0:
        return components
    if split == "watershed":
        edges = [prob[i] for i in (_head_index(heads, "boundary"), _head_index(heads, "contact")) if i is not None]
        edge = np.maximum.reduce(edges) if len(edges) > 1 else edges[0]
        with np.errstate(invalid="ignore"):
            seeds = mask & (footprint >= options.seed_threshold) & (edge < options.seed_max_edge)
        elevation = (1.0 - footprint) + sum(edges)
    else:  # distance
        distance = ndimage.distance_transform_edt(mask).astype(np.float32)
        peak = np.zeros(count + 1, np.float32)
        peak[1:] = ndimage.maximum(distance, components, index=np.arange(1, count + 1))
        seeds = mask & (distance >= options.distance_seed_fraction * peak[components]) & (distance >= 1.5)
        elevation = -distance
    markers, n_markers = ndimage.label(seeds)
    if n_markers < 2:
        return components
    min_seed_px = max(1.0, options.min_seed_m2 / (gsd_m * gsd_m))
    sizes = np.bincount(markers.ravel(), minlength=n_markers + 1)
    # Component of each marker: markers lie inside the mask, so any of their pixels tells.
    marker_component = np.zeros(n_markers + 1, np.int64)
    marker_component[markers.ravel()] = components.ravel()
    good = sizes >= min_seed_px
    good[0] = False
    seeds_per_component = np.bincount(marker_component[good], minlength=count + 1)
    to_split = np.flatnonzero(seeds_per_component >= 2)
    if len(to_split) == 0:
        return components
    from skimage.segmentation import watershed

    labels = components.copy()
    next_label = count + 1
    slices = ndimage.find_objects(components)
    for component in to_split:
        window = slices[component - 1]
        inside = components[window] == component
        local_markers = np.where(inside & good[markers[window]], markers[window], 0)
        flooded = watershed(elevation[window], local_markers, mask=inside)
        values = np.unique(flooded[inside])
        values = values[values > 0]
        lookup = np.zeros(int(flooded.max()) + 1, np.int32)
        lookup[values] = np.arange(next_label, next_label + len(values), dtype=np.int32)
        next_label += len(values)
        region = labels[window]
        region[inside] = lookup[flooded[inside]]
    return labels


# --------------------------------------------------------------------------- polygonizing blocks


@dataclass
class _Piece:
    polygon: Polygon  # global pixel coordinates
    prob_sum: float
    pixels: int
    block: int = -1  # pieces of one block never join: a shared edge there is a watershed line


def _shapes_to_polygons(
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


def _block_pieces(
    labels: np.ndarray,
    footprint: np.ndarray,
    row0: int,
    col0: int,
    seams: tuple[bool, bool, bool, bool],
    min_pixels: float,
    block: int = -1,
) -> tuple[list[_Piece], list[_Piece]]:
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
    polygons, values = _shapes_to_polygons(labels, row0, col0, inside)
    done, pending = [], []
    for polygon, value in zip(polygons, values):
        piece = _Piece(polygon, float(prob_sum[value]), int(pixels[value]), block)
        (pending if on_seam[value] else done).append(piece)
    return done, pending


def _seam_join(a: Polygon, b: Polygon, split: str) -> bool:
    """Whether two seam pieces from different blocks are one building (see _merge_seam_pieces)."""
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


def _union_pieces(pieces: list[_Piece]) -> list[_Piece]:
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
        merged.append(_Piece(part, total_sum * share, max(1, round(total_pixels * share))))
    return merged


def _merge_seam_pieces(pending: list[_Piece], split: str) -> list[_Piece]:
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
    groups: dict[int, list[_Piece]] = {}
    for i, piece in enumerate(pending):
        groups.setdefault(find(i), []).append(piece)
    return [merged for members in groups.values() for merged in _union_pieces(members)]


# --------------------------------------------------------------------------- finishing polygons


def _fill_small_holes(polygon: Polygon, max_hole_px: float) -> Polygon:
    if max_hole_px <= 0 or not polygon.interiors:
        return polygon
    kept = [ring for ring in polygon.interiors if Polygon(ring).area >= max_hole_px]
    if len(kept) == len(polygon.interiors):
        return polygon
    return Polygon(polygon.exterior, kept)


def _finish(
    pieces: list[_Piece],
    transform,
    metric: Metric,
    options: PolygonOptions,
    source: str,
    model: str,
) -> tuple[list[BaseGeometry], list[dict[str, Any]]]:
    """Fill holes, simplify, regularize, map to the CRS, measure, filter and order the pieces."""
    if not pieces:
        return [], []
    pixel_area_m2 = metric.gsd_m**2
    hole_px = options.hole_area_m2 / pixel_area_m2
    tolerance_px = 0.75 if options.simplify_m is None else options.simplify_m / metric.gsd_m
    geoms = np.array([_fill_small_holes(p.polygon, hole_px) for p in pieces], dtype=object)
    invalid = ~shapely.is_valid(geoms)
    for i in np.flatnonzero(invalid):
        geoms[i] = largest_polygon(shapely.make_valid(geoms[i]))
    present = np.array([g is not None for g in geoms])
    geoms = np.where(present, geoms, None)
    # A canonical vertex order makes simplification independent of where a ring happened to start,
    # so a building gives the same outline whether it was polygonized whole or joined across seams.
    geoms[present] = shapely.normalize(shapely.simplify(geoms[present], 0.0))
    if tolerance_px > 0:
        geoms[present] = shapely.simplify(geoms[present], tolerance_px, preserve_topology=True)
    regularized = np.zeros(len(geoms), bool)
    if options.regularize:
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
    still_invalid = present & ~shapely.is_valid(np.where(present, geoms, Polygon()))
    for i in np.flatnonzero(still_invalid):
        geoms[i] = largest_polygon(shapely.make_valid(geoms[i]))
    present = np.array([g is not None and not g.is_empty for g in geoms])
    index = np.flatnonzero(present)
    pixel_geoms = geoms[index]
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    map_geoms = shapely.transform(
        pixel_geoms, lambda xy: np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])
    )
    broken = ~shapely.is_valid(map_geoms)  # float rounding of the affine can pinch a ring
    for k in np.flatnonzero(broken):
        map_geoms[k] = largest_polygon(shapely.make_valid(map_geoms[k])) or Polygon()
    area_m2, perimeter_m = measure(map_geoms, metric)
    bounds = shapely.bounds(pixel_geoms)
    order = [
        k
        for k in np.lexsort((area_m2, bounds[:, 0], bounds[:, 1]))
        if area_m2[k] >= options.min_area_m2 and area_m2[k] > 0
    ]
    out_geoms, out_attrs = [], []
    for k in order:
        piece = pieces[index[k]]
        perimeter = float(perimeter_m[k])
        area = float(area_m2[k])
        out_geoms.append(map_geoms[k])
        out_attrs.append(
            {
                "score": round(piece.prob_sum / piece.pixels, 4) if piece.pixels else 0.0,
                "area_m2": round(area, 2),
                "perimeter_m": round(perimeter, 2),
                "compactness": round(4.0 * math.pi * area / perimeter**2, 4) if perimeter > 0 else 0.0,
                "regularized": bool(regularized[index[k]]),
                "source": source,
                "model": model,
            }
        )
    return out_geoms, out_attrs


# --------------------------------------------------------------------------- the block engine

BlockReader = Callable[[int, int, int, int], tuple[np.ndarray, Optional[np.ndarray]]]


def _polygonize_blocks(
    read: BlockReader,
    height: int,
    width: int,
    heads: Sequence[str],
    transform,
    crs_wkt: Optional[str],
    options: PolygonOptions,
    source: str,
    model: str,
    progress: Optional[ProgressCallback],
    is_canceled: Optional[CancelCallback],
    warnings: Optional[list[str]] = None,
) -> PolygonResult:
    options.validate()
    started = time.perf_counter()
    split = resolve_split(options.split, heads)
    metric = metric_for(crs_wkt, transform, width, height)
    footprint_index = _head_index(heads, "footprint") or 0
    # Pieces smaller than half the minimum area cannot become a building (holes add little); drop them early.
    min_pixels = 0.5 * options.min_area_m2 / metric.gsd_m**2
    margin = options.overlap if split != "none" else 0
    size = options.block_size
    blocks = [(r, c) for r in range(0, height, size) for c in range(0, width, size)]
    done: list[_Piece] = []
    pending: list[_Piece] = []
    for number, (row0, col0) in enumerate(blocks):
        check_canceled(is_canceled)
        row1, col1 = min(row0 + size, height), min(col0 + size, width)
        ext_r0, ext_c0 = max(row0 - margin, 0), max(col0 - margin, 0)
        ext_r1, ext_c1 = min(row1 + margin, height), min(col1 + margin, width)
        prob, valid = read(ext_r0, ext_r1, ext_c0, ext_c1)
        labels = label_instances(prob, valid, heads, options, split, metric.gsd_m)
        core = (slice(row0 - ext_r0, row1 - ext_r0), slice(col0 - ext_c0, col1 - ext_c0))
        labels = np.ascontiguousarray(labels[core])
        seams = (row0 > 0, row1 < height, col0 > 0, col1 < width)
        block_done, block_pending = _block_pieces(
            labels, prob[footprint_index][core], row0, col0, seams, min_pixels, number
        )
        done.extend(block_done)
        pending.extend(block_pending)
        if progress is not None:
            progress(0.9 * (number + 1) / len(blocks))
    check_canceled(is_canceled)
    done.extend(_merge_seam_pieces(pending, split))
    geoms, attrs = _finish(done, transform, metric, options, source, model)
    if progress is not None:
        progress(1.0)
    return PolygonResult(
        geometries=geoms,
        attributes=attrs,
        crs_wkt=crs_wkt,
        gsd_m=metric.gsd_m,
        warnings=list(warnings or []) + metric.warnings,
        megapixels=height * width / 1e6,
        seconds=time.perf_counter() - started,
    )


def _as_affine(transform):
    """A rasterio Affine from an Affine or its 6 coefficients (a, b, c, d, e, f); None -> pixel grid."""
    from rasterio.transform import Affine

    if isinstance(transform, Affine):
        return transform
    if transform is None:
        return Affine.identity()
    return Affine(*tuple(transform)[:6])


def polygonize_array(
    prob: np.ndarray,
    transform,
    crs_wkt: Optional[str],
    options: Optional[PolygonOptions] = None,
    nodata_mask: Optional[np.ndarray] = None,
    source: str = "",
    model: str = "",
    heads: Optional[Sequence[str]] = None,
    progress: Optional[ProgressCallback] = None,
    is_canceled: Optional[CancelCallback] = None,
) -> PolygonResult:
    """Polygonize in-memory probabilities: (heads, H, W) or (H, W) float 0..1, NaN = nodata.

    heads names the bands (default footprint, boundary, contact in that order); nodata_mask is True
    where there is no data. transform is a rasterio Affine (pixel -> CRS).
    """
    options = options or PolygonOptions()
    prob = np.asarray(prob)
    if prob.ndim == 2:
        prob = prob[np.newaxis]
    if prob.ndim != 3 or prob.shape[0] < 1:
        raise InputError(f"Probabilities must have shape (heads, rows, cols) or (rows, cols), not {prob.shape}.")
    heads = list(heads) if heads is not None else list(DEFAULT_HEADS[: prob.shape[0]])
    if len(heads) != prob.shape[0]:
        raise InputError(
            f"{len(heads)} head names given for {prob.shape[0]} probability bands; give one name per band."
        )
    if "footprint" not in heads:
        raise InputError(
            f"No 'footprint' band among the heads {heads}; name the building probability band 'footprint'."
        )
    prob = prob.astype(np.float32, copy=False)
    _, height, width = prob.shape
    nodata = None if nodata_mask is None else np.asarray(nodata_mask, bool)
    if nodata is not None and nodata.shape != (height, width):
        raise InputError(f"The nodata mask {nodata.shape} does not match the probabilities {(height, width)}.")

    def read(r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        block = prob[:, r0:r1, c0:c1]
        valid = None if nodata is None else ~nodata[r0:r1, c0:c1]
        if len(block) > 1:  # NaN in an edge head would poison the watershed
            finite = np.isfinite(block).all(axis=0)
            valid = finite if valid is None else valid & finite
        return block, valid

    return _polygonize_blocks(
        read, height, width, heads, _as_affine(transform), crs_wkt, options, source, model, progress, is_canceled
    )


def probability_heads(dataset) -> list[str]:
    """Head names of an open probability raster: FOOTPRINT_HEADS tag, band descriptions, or the default order."""
    tag = dataset.tags().get(HEADS_TAG)
    if tag:
        names = [name.strip() for name in tag.split(",") if name.strip()]
        if len(names) == dataset.count:
            return names
    descriptions = [d.strip().lower() if d else "" for d in dataset.descriptions]
    if "footprint" in descriptions and len(set(descriptions)) == len(descriptions):
        return descriptions
    return list(DEFAULT_HEADS[: dataset.count]) + [f"band{i}" for i in range(4, dataset.count + 1)]


def polygonize_raster(
    prob_path: Path | str,
    options: Optional[PolygonOptions] = None,
    source: str = "",
    model: str = "",
    progress: Optional[ProgressCallback] = None,
    is_canceled: Optional[CancelCallback] = None,
) -> PolygonResult:
    """Polygonize a probability GeoTIFF (docs/ARCHITECTURE.md format) block by block."""
    from rasterio.windows import Window

    from ..io.raster_io import open_raster

    options = options or PolygonOptions()
    prob_path = Path(prob_path)
    if not prob_path.exists():
        raise InputError(f"Probability raster not found: {prob_path}. Check the path or run detection first.")
    dataset = open_raster(prob_path)  # the engine's one opener: corrupt/empty files raise InputError
    warnings: list[str] = []
    with dataset:
        heads = probability_heads(dataset)
        if "footprint" not in heads:
            raise InputError(f"{prob_path.name} has no 'footprint' band (bands: {heads}). Use a probability raster.")
        scales, offsets = [], []
        for band in range(dataset.count):
            scale, offset = float(dataset.scales[band]), float(dataset.offsets[band])
            dtype = np.dtype(dataset.dtypes[band])
            if scale == 1.0 and offset == 0.0 and dtype.kind in "ui":
                # Probabilities written without scale metadata: 0..254 (nodata 255) or 0..255.
                if dtype == np.uint8:
                    scale = 1 / 254 if dataset.nodatavals[band] == 255 else 1 / 255
                else:
                    scale = 1 / float(np.iinfo(dtype).max)
                    warnings.append(f"{prob_path.name} band {band + 1} is {dtype} without a scale; read as 0..1.")
            scales.append(scale)
            offsets.append(offset)
        crs_wkt = dataset.crs.to_wkt() if dataset.crs else None

        def read(r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
            window = Window(c0, r0, c1 - c0, r1 - r0)
            raw = dataset.read(window=window)
            prob = np.empty(raw.shape, np.float32)
            for band in range(raw.shape[0]):
                np.multiply(raw[band], scales[band], out=prob[band], casting="unsafe")
                if offsets[band]:
                    prob[band] += offsets[band]
            valid = dataset.read_masks(1, window=window) > 0
            valid &= np.isfinite(prob).all(axis=0)
            return prob, valid

        return _polygonize_blocks(
            read,
            dataset.height,
            dataset.width,
            heads,
            dataset.transform,
            crs_wkt,
            options,
            source or prob_path.name,
            model,
            progress,
            is_canceled,
            warnings,
        )


def write_buildings(result: PolygonResult, out_path: Path | str, layer_name: str = "buildings") -> Path:
    """Write the polygons with BUILDING_FIELDS atomically; GeoPackage, or any OGR format by suffix."""
    from ..io.vector_io import write_polygons

    fields = dict(BUILDING_FIELDS)
    for attrs in result.attributes[:1]:
        for key, value in attrs.items():
            fields.setdefault(key, type(value) if type(value) in (int, float, str, bool) else str)
    return write_polygons(
        out_path, result.geometries, result.attributes, result.crs_wkt, fields=fields, layer_name=layer_name
    )
