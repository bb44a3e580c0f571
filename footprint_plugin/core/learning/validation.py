"""Validation: predict an in-memory raster through the inference tiling, polygonize, score object F1.

Tiles, padding and blend weights come from core.engine.tiling.TileGrid, the grid Detect buildings
uses, and the polygons from the real post-processing, so a validation score is what a user gets.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..common.callbacks import CancelCallback, check_canceled
from ..engine.tiling import TileGrid, pad_tile
from ..vectors.evaluate import scores_from_counts
from ..zoo.modelcard import ModelCard
from .chips import PreparedRaster
from .labels import clip_ground_truth

THRESHOLD_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)


def predict_array(
    model: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
) -> np.ndarray:
    """Sigmoid probabilities (K, H, W) for an in-memory (C, H, W) image.

    Tiles, padding and blend weights are the ones predict_raster uses, so validation scores what
    Detect buildings will produce (without TTA).
    """
    model.eval()
    _channels, rows, cols = image.shape
    grid = TileGrid.for_raster(cols, rows, tile, overlap)
    windows = [(y, x) for y in grid.ys for x in grid.xs]
    accumulated: Optional[np.ndarray] = None
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        batch = np.stack(
            [pad_tile(image[:, y : y + grid.tile_h, x : x + grid.tile_w], grid.tile_h, grid.tile_w) for y, x in group]
        )
        with torch.no_grad():
            probabilities = (
                torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(batch)).to(device)).float()).cpu().numpy()
            )
        if accumulated is None:
            accumulated = np.zeros((probabilities.shape[1], rows, cols), np.float32)
        for (y, x), probability in zip(group, probabilities):
            h, w = min(grid.tile_h, rows - y), min(grid.tile_w, cols - x)
            accumulated[:, y : y + h, x : x + w] += probability[:, :h, :w] * grid.weights[:h, :w]
    assert accumulated is not None
    # The blend weights are separable, so their sum is the product of the per-axis sums (as in inference).
    return accumulated / np.outer(grid.norm_y, grid.norm_x)


def _polygonize(probabilities: np.ndarray, transform, crs_wkt: str, card: ModelCard, nodata: np.ndarray) -> list:
    from ..vectors.polygons import PolygonOptions, polygonize_array

    options = PolygonOptions(threshold=card.threshold)
    result = polygonize_array(probabilities, transform, crs_wkt, options, nodata_mask=nodata, heads=list(card.heads))
    return list(result.geometries)


def _object_counts(pred: list, truth: list) -> tuple[int, int, int]:
    from ..vectors.evaluate import score_polygons

    scores, _matches = score_polygons(pred, truth, iou_threshold=0.5)
    return int(scores.tp), int(scores.fp), int(scores.fn)


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def evaluate_rasters(
    model: torch.nn.Module,
    rasters: Sequence[PreparedRaster],
    card: ModelCard,
    device: torch.device,
    roles: Sequence[str],
    is_canceled: Optional[CancelCallback] = None,
    threshold: Optional[float] = None,
    cache: Optional[dict[int, np.ndarray]] = None,
) -> dict[str, dict[str, Any]]:
    """Object scores (IoU 0.5, real post-processing) and pixel IoU per area, for rasters with the given roles.

    threshold overrides the card's; cache (raster index -> probabilities) lets several thresholds share one inference.
    """
    from affine import Affine

    if threshold is not None:
        card = copy.copy(card)
        card.threshold = threshold
    per_area: dict[str, dict[str, Any]] = {}
    for index, raster in enumerate(rasters):
        check_canceled(is_canceled)
        mask = raster.eval_mask()
        split = "test" if raster.role == "test" else "val"
        if mask is None or split not in roles or not mask.any():
            continue
        r0, r1, c0, c1 = _crop_box(mask)
        crop_mask = mask[r0:r1, c0:c1]
        transform = raster.transform * Affine.translation(c0, r0)
        if cache is not None and index in cache:
            probabilities = cache[index]
        else:
            probabilities = predict_array(model, raster.image[:, r0:r1, c0:c1], device, card.tile_size, card.overlap)
            if cache is not None:
                cache[index] = probabilities
        footprint = (probabilities[0] >= card.threshold) & crop_mask
        truth_pixels = raster.targets[0, r0:r1, c0:c1] > 0
        predictions = _polygonize(probabilities, transform, raster.crs_wkt, card, ~crop_mask)
        truth = clip_ground_truth(raster.labels, transform, crop_mask)
        tp, fp, fn = _object_counts(predictions, truth)
        entry = per_area.setdefault(raster.name, {"split": split, "tp": 0, "fp": 0, "fn": 0, "inter": 0, "union": 0})
        entry["tp"] += tp
        entry["fp"] += fp
        entry["fn"] += fn
        entry["inter"] += int((footprint & truth_pixels & crop_mask).sum())
        entry["union"] += int(((footprint | truth_pixels) & crop_mask).sum())
    for entry in per_area.values():
        scores = scores_from_counts(entry["tp"], entry["fp"], entry["fn"])
        inter, union = entry.pop("inter"), entry.pop("union")
        entry.update(
            precision=round(scores.precision, 4),
            recall=round(scores.recall, 4),
            f1=round(scores.f1, 4),
            pixel_iou=round(inter / union, 4) if union else 0.0,
            n_buildings=entry["tp"] + entry["fn"],
        )
    return per_area


def summarise(per_area: dict[str, dict[str, Any]], split: str) -> dict[str, float]:
    entries = [e for e in per_area.values() if e["split"] == split]
    tp, fp, fn = (sum(e[k] for e in entries) for k in ("tp", "fp", "fn"))
    scores = scores_from_counts(tp, fp, fn)
    return {
        "f1": round(scores.f1, 4),
        "precision": round(scores.precision, 4),
        "recall": round(scores.recall, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def calibrate_threshold(
    model: torch.nn.Module,
    rasters: Sequence[PreparedRaster],
    card: ModelCard,
    device: torch.device,
    is_canceled: Optional[CancelCallback] = None,
) -> tuple[float, dict[str, float]]:
    """(the candidate threshold with the best validation F1, F1 by candidate); one inference per raster."""
    search: dict[str, float] = {}
    cache: dict[int, np.ndarray] = {}
    for candidate in THRESHOLD_CANDIDATES:
        scores = evaluate_rasters(model, rasters, card, device, ("val",), is_canceled, threshold=candidate, cache=cache)
        search[f"{candidate:g}"] = summarise(scores, "val")["f1"]
    best = max(THRESHOLD_CANDIDATES, key=lambda t: (search[f"{t:g}"], -abs(t - 0.5)))
    return float(best), search
