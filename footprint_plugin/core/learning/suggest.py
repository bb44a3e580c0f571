"""Where to digitize next: square cells of a detection run, ranked by how much labelling each would teach.

Two signals, both cheap enough to run right after Detect on a CPU:
  uncertainty  how close the cell's probabilities sit to the threshold (1 at the threshold, 0 where the
               model is sure either way), averaged over the cell's valid pixels;
  variety      how unlike the cell looks from the cells already labelled (and those already picked):
               the distance of simple image statistics (band means and spreads) and the cell's
               probability histogram, each feature standardised over all cells.
Cells are picked greedily: score = uncertainty x (1 - w + w x variety), so a second cell just like
the first drops down the list. Cells already labelled (mostly inside the given polygons) are left out.
The reviewed cells then become the area of interest of a fine-tune: inside them, an unlabelled pixel
means "no building here".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import shapely
from affine import Affine
from shapely.geometry.base import BaseGeometry

from ..common.errors import InputError
from ..common.vocabulary import DEFAULT_CELL_SIZE_M
from ..io import raster_io
from .labels import rasterize_region

HISTOGRAM_EDGES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0001)
# A cell counts as labelled when this share of it lies inside the labelled polygons.
LABELLED_SHARE = 0.25


@dataclass
class CellSuggestion:
    """One square cell (raster CRS) with its rank (1 = label first) and the signals behind it."""

    rank: int
    geometry: BaseGeometry
    row: int
    col: int
    score: float
    uncertainty: float
    variety: float
    mean_probability: float
    detections: int = 0


@dataclass
class CellGrid:
    """Square cells over a probability raster: their pixel blocks and per-cell features."""

    transform: Affine
    crs_wkt: str
    cell_px: int
    rows: int
    cols: int
    uncertainty: np.ndarray  # (rows, cols), NaN where too little of the cell is valid
    mean_probability: np.ndarray
    features: np.ndarray  # (rows, cols, F)

    def box(self, row: int, col: int) -> BaseGeometry:
        x0, y0 = self.transform * (col * self.cell_px, row * self.cell_px)
        x1, y1 = self.transform * ((col + 1) * self.cell_px, (row + 1) * self.cell_px)
        return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def uncertainty_of(probability: np.ndarray, threshold: float) -> np.ndarray:
    """1 where the probability equals the threshold, falling linearly to 0 at 0 and at 1."""
    span = np.where(probability >= threshold, 1.0 - threshold, threshold)
    return np.clip(1.0 - np.abs(probability - threshold) / np.maximum(span, 1e-6), 0.0, 1.0)


def _cell_pixels(dataset, cell_size_m: float) -> int:
    size = raster_io.ground_pixel_size_m(dataset)
    if size is None:
        raise InputError(f"{dataset.name} has no usable CRS. Assign one in QGIS before suggesting cells.")
    return max(4, int(round(cell_size_m / math.sqrt(size[0] * size[1]))))


def _image_statistics(image_path: Path, shape: tuple[int, int], bounds) -> np.ndarray:
    """Band values (C, h, w) of the image read onto the probability raster's grid (0..1 by band percentile)."""
    from rasterio.windows import from_bounds

    with raster_io.opened(image_path) as dataset:
        alpha = raster_io.alpha_band(dataset)
        bands = [b for b in range(1, dataset.count + 1) if b != alpha][:4]
        window = from_bounds(*bounds, transform=dataset.transform)
        data = dataset.read(bands, window=window, out_shape=(len(bands), *shape), boundless=True).astype(np.float32)
    for band in data:
        low, high = np.percentile(band, [2, 98])
        band -= low
        band /= max(high - low, 1e-6)
    return data


def _block_view(array: np.ndarray, cell_px: int, rows: int, cols: int) -> np.ndarray:
    """(..., rows, cols, cell_px * cell_px) blocks of a (..., H, W) array padded to whole cells with NaN."""
    lead, (height, width) = array.shape[:-2], array.shape[-2:]
    padded = np.full((*lead, rows * cell_px, cols * cell_px), np.nan, np.float32)
    padded[..., :height, :width] = array
    blocks = padded.reshape(*lead, rows, cell_px, cols, cell_px)
    return np.moveaxis(blocks, -3, -2).reshape(*lead, rows, cols, cell_px * cell_px)


def cell_grid(
    probability_path: Path | str,
    cell_size_m: float = DEFAULT_CELL_SIZE_M,
    threshold: float = 0.5,
    image_path: Optional[Path | str] = None,
    min_valid: float = 0.5,
) -> CellGrid:
    """Cut the probability raster into square cells and measure each one."""
    if cell_size_m <= 0:
        raise InputError(f"The cell size must be more than 0 m, not {cell_size_m:g}.")
    with raster_io.opened(probability_path) as dataset:
        cell_px = _cell_pixels(dataset, cell_size_m)
        transform, crs_wkt, bounds = dataset.transform, dataset.crs.to_wkt(), tuple(dataset.bounds)
    probability, valid, _heads = raster_io.read_probability(probability_path)
    footprint = np.where(valid, probability[0], np.nan).astype(np.float32)
    rows, cols = math.ceil(footprint.shape[0] / cell_px), math.ceil(footprint.shape[1] / cell_px)
    blocks = _block_view(footprint, cell_px, rows, cols)
    valid_share = np.isfinite(blocks).mean(axis=-1)
    # np.nanmean warns on all-NaN cells; those are dropped by their valid share below.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        uncertainty = np.nanmean(uncertainty_of(blocks, threshold), axis=-1)
        mean_probability = np.nanmean(blocks, axis=-1)
        histogram = np.stack(
            [
                np.nanmean((blocks >= lo) & (blocks < hi), axis=-1)
                for lo, hi in zip(HISTOGRAM_EDGES, HISTOGRAM_EDGES[1:])
            ],
            axis=-1,
        )
        features = [histogram]
        if image_path is not None:
            image = _image_statistics(Path(image_path), footprint.shape, bounds)
            image[:, ~valid] = np.nan
            image_blocks = _block_view(image, cell_px, rows, cols)
            features += [np.moveaxis(np.nanmean(image_blocks, axis=-1), 0, -1)]
            features += [np.moveaxis(np.nanstd(image_blocks, axis=-1), 0, -1)]
    uncertainty[valid_share < min_valid] = np.nan
    return CellGrid(
        transform, crs_wkt, cell_px, rows, cols, uncertainty, mean_probability, np.concatenate(features, -1)
    )


def labelled_cells(grid: CellGrid, labelled: Sequence[BaseGeometry]) -> np.ndarray:
    """(rows, cols) bool: cells mostly inside the labelled polygons (e.g. the reviewed cells of a past round)."""
    if not labelled:
        return np.zeros((grid.rows, grid.cols), bool)
    inside = rasterize_region(labelled, grid.transform, (grid.rows * grid.cell_px, grid.cols * grid.cell_px))
    share = _block_view(inside.astype(np.float32), grid.cell_px, grid.rows, grid.cols).mean(axis=-1)
    return share >= LABELLED_SHARE


def _standardised(features: np.ndarray) -> np.ndarray:
    flat = np.nan_to_num(features.reshape(-1, features.shape[-1]))
    spread = flat.std(axis=0)
    return (flat - flat.mean(axis=0)) / np.where(spread > 1e-9, spread, 1.0)


def rank_cells(
    grid: CellGrid,
    labelled: Optional[Sequence[BaseGeometry]] = None,
    max_cells: int = 20,
    variety_weight: float = 0.5,
) -> list[CellSuggestion]:
    """The best max_cells cells to label next, best first, never one already labelled."""
    if not 0.0 <= variety_weight <= 1.0:
        raise InputError(f"The variety weight must be between 0 and 1, not {variety_weight:g}.")
    taken = labelled_cells(grid, labelled or []).ravel()
    uncertainty = np.nan_to_num(grid.uncertainty.ravel(), nan=-1.0)
    features = _standardised(grid.features)
    references = [features[i] for i in np.flatnonzero(taken)]
    candidates = np.flatnonzero((uncertainty > 0) & ~taken)
    top = max(float(uncertainty[candidates].max()), 1e-9) if candidates.size else 1.0
    chosen: list[CellSuggestion] = []
    while candidates.size and len(chosen) < max_cells:
        if references:
            distance = np.min([np.linalg.norm(features[candidates] - r, axis=1) for r in references], axis=0)
            variety = distance / max(float(distance.max()), 1e-9)
        else:
            variety = np.ones(candidates.size)
        score = uncertainty[candidates] / top * (1.0 - variety_weight + variety_weight * variety)
        best = int(np.argmax(score))
        index = int(candidates[best])
        row, col = divmod(index, grid.cols)
        chosen.append(
            CellSuggestion(
                rank=len(chosen) + 1,
                geometry=grid.box(row, col),
                row=row,
                col=col,
                score=round(float(score[best]), 4),
                uncertainty=round(float(uncertainty[index]), 4),
                variety=round(float(variety[best]), 4),
                mean_probability=round(float(grid.mean_probability.ravel()[index]), 4),
            )
        )
        references.append(features[index])
        candidates = np.delete(candidates, best)
    return chosen


def count_detections(cells: Sequence[CellSuggestion], detections: Sequence[BaseGeometry]) -> None:
    """Each cell's number of detected buildings (by centroid), for the table and the Corrections layer."""
    if not detections:
        return
    tree = shapely.STRtree([g.centroid for g in detections])
    for cell in cells:
        cell.detections = len(tree.query(cell.geometry, predicate="contains"))


def suggest_cells(
    probability_path: Path | str,
    cell_size_m: float = DEFAULT_CELL_SIZE_M,
    threshold: float = 0.5,
    labelled: Optional[Sequence[BaseGeometry]] = None,
    image_path: Optional[Path | str] = None,
    detections: Optional[Sequence[BaseGeometry]] = None,
    max_cells: int = 20,
    variety_weight: float = 0.5,
) -> list[CellSuggestion]:
    """Cells to digitize next (raster CRS), best first: see the module docstring for the ranking."""
    grid = cell_grid(probability_path, cell_size_m, threshold, image_path)
    cells = rank_cells(grid, labelled, max_cells, variety_weight)
    count_detections(cells, list(detections or []))
    return cells


def detections_in_cells(cells: Sequence[BaseGeometry], detections: Sequence[BaseGeometry]) -> list[BaseGeometry]:
    """The detected outlines whose centre lies in one of the cells: the start of a Corrections layer."""
    if not cells or not detections:
        return []
    tree = shapely.STRtree(list(cells))
    return [g for g in detections if len(tree.query(g.centroid, predicate="within"))]
