"""Probabilities -> building polygons: threshold, split touching buildings, polygonize, clean, attributes.

Rasters stream through block by block (with an overlap read around each block so the watershed
sees its neighbours). Polygons are built in global pixel coordinates, which are exact integers in
every block, so pieces of a building cut by a block seam join exactly; they are mapped to the
raster's CRS only at the end. Area and perimeter are measured in metres, in a local UTM zone
when the raster CRS is geographic.

Stages, one module each: `options` (PolygonOptions), `instances` (labels per block: seeds, growth, split,
merge), `pieces` (polygonize a block, join pieces across seams), `finish` (holes, simplify, square, measure).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from shapely.geometry.base import BaseGeometry

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled
from ..common.errors import InputError
from ..common.geometry import metric_for
from ..common.vocabulary import BUILDING_FIELDS
from ..io.raster_io import HEADS_TAG  # the probability raster format is raster_io's
from .finish import finish_pieces
from .instances import head_index, label_instances, resolve_split
from .options import SPLIT_MODES, PolygonOptions
from .pieces import Piece, block_pieces, merge_seam_pieces
from .pieces import shapes_to_polygons as _shapes_to_polygons  # noqa: F401 - kept for tests and tools

__all__ = ["SPLIT_MODES", "PolygonOptions", "PolygonResult", "label_instances", "resolve_split"]

DEFAULT_HEADS = ("footprint", "boundary", "contact")


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


# --------------------------------------------------------------------------- the block engine

BlockReader = Callable[[int, int, int, int], tuple[np.ndarray, Optional[np.ndarray]]]


def _block_windows(height: int, width: int, size: int, margin: int):
    """(core window, window read with its margin) of every block, in reading order."""
    for row0 in range(0, height, size):
        for col0 in range(0, width, size):
            row1, col1 = min(row0 + size, height), min(col0 + size, width)
            extended = (
                max(row0 - margin, 0),
                min(row1 + margin, height),
                max(col0 - margin, 0),
                min(col1 + margin, width),
            )
            yield (row0, row1, col0, col1), extended


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
    footprint_index = head_index(heads, "footprint") or 0
    # Pieces smaller than half the minimum area cannot become a building (holes add little); drop them early.
    min_pixels = 0.5 * options.min_area_m2 / metric.gsd_m**2
    blocks = list(_block_windows(height, width, options.block_size, options.overlap if split != "none" else 0))
    done: list[Piece] = []
    pending: list[Piece] = []
    for number, ((row0, row1, col0, col1), (ext_r0, ext_r1, ext_c0, ext_c1)) in enumerate(blocks):
        check_canceled(is_canceled)
        prob, valid = read(ext_r0, ext_r1, ext_c0, ext_c1)
        labels = label_instances(prob, valid, heads, options, split, metric.gsd_m)
        core = (slice(row0 - ext_r0, row1 - ext_r0), slice(col0 - ext_c0, col1 - ext_c0))
        seams = (row0 > 0, row1 < height, col0 > 0, col1 < width)
        block_done, block_pending = block_pieces(
            np.ascontiguousarray(labels[core]), prob[footprint_index][core], row0, col0, seams, min_pixels, number
        )
        done.extend(block_done)
        pending.extend(block_pending)
        if progress is not None:
            progress(0.9 * (number + 1) / len(blocks))
    check_canceled(is_canceled)
    done.extend(merge_seam_pieces(pending, split))
    geoms, attrs = finish_pieces(done, transform, metric, options, source, model)
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

    from ..io.raster_io import decode_probability, open_raster

    options = options or PolygonOptions()
    prob_path = Path(prob_path)
    if not prob_path.exists():
        raise InputError(f"Probability raster not found: {prob_path}. Check the path or run detection first.")
    dataset = open_raster(prob_path)  # the engine's one opener: corrupt/empty files raise InputError
    notes: list[str] = []
    with dataset:
        heads = probability_heads(dataset)
        if "footprint" not in heads:
            raise InputError(f"{prob_path.name} has no 'footprint' band (bands: {heads}). Use a probability raster.")

        def read(r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
            # Notes are the same for every block: keep the first block's only.
            return decode_probability(dataset, Window(c0, r0, c1 - c0, r1 - r0), None if r0 or c0 else notes)

        crs_wkt = dataset.crs.to_wkt() if dataset.crs else None
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
            notes,
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
