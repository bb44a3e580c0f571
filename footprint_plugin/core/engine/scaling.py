"""Input scaling from the model card, with statistics computed once per raster.

Every tile of a raster is scaled with the same statistics (computed from a decimated read of
the whole raster), because per-tile statistics make visible seams between tiles.

Methods (``card.scaling["method"]``), applied per band, then an optional ``mean``/``std``:
  divide      x / value                                        (e.g. uint8 / 255)
  percentile  (x - p_low) / (p_high - p_low), clipped to 0..1  (p from the raster, defaults 2 / 98)
  meanstd     (x - mean) / std on raw values
  db          SAR intensity: to dB when ``input_units`` is "linear" (complex SLC: |z|^2 first),
              clip to ``clip_db`` [lo, hi] (or the raster's percentiles when absent), map to 0..1
Invalid (nodata) pixels are set to 0 after scaling. The training engine uses the same functions.
"""

from __future__ import annotations

import copy
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..common.errors import InputError, ModelError
from ..zoo.modelcard import ModelCard

# Longest side of the decimated read used for statistics: ~1 M pixels is plenty for percentiles.
STATS_MAX_SIDE = 1024
DB_FLOOR_LINEAR = 1e-10


@dataclass
class ScalingStats:
    """What to read and how to scale it, fixed for a whole raster."""

    method: str
    band_indexes: list[int]  # 1-based raster bands to read, in the model's band order
    replicate_to: int  # channels the model gets (> len(band_indexes) for panchromatic replication)
    low: list[float] = field(default_factory=list)  # per read band, in input units (dB for "db")
    high: list[float] = field(default_factory=list)
    complex_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_bands(band_count: int, card: ModelCard, alpha_band: Optional[int] = None) -> tuple[list[int], int]:
    """(1-based bands to read, channel count fed to the model) for a raster with band_count bands.

    An alpha band (e.g. RGBA) is not a data band: it becomes part of the validity mask.
    """
    data_bands = [b for b in range(1, band_count + 1) if b != alpha_band]
    wanted = card.in_channels
    if len(data_bands) == wanted:
        return data_bands, wanted
    if len(data_bands) == 1 and wanted > 1:
        if card.allow_panchromatic:
            return data_bands, wanted
        raise ModelError(
            f"The raster has 1 band but model '{card.name}' expects {wanted} bands "
            f"({', '.join(card.band_roles)}). Choose a model trained on panchromatic imagery, "
            "or one whose card allows panchromatic input."
        )
    raise ModelError(
        f"The raster has {len(data_bands)} bands but model '{card.name}' expects {wanted} bands "
        f"({', '.join(card.band_roles)}). Choose a model for this sensor, or build a VRT with the right bands."
    )


def _scaling_params(card: ModelCard) -> dict[str, Any]:
    params = dict(card.scaling)
    method = params.get("method")
    if method == "db" and params.get("input_units", "db") not in ("db", "linear"):
        raise ModelError(f"Model card '{card.name}': scaling.input_units must be 'db' or 'linear'.")
    if method == "divide" and not float(params.get("value", 0)):
        raise ModelError(f"Model card '{card.name}': scaling 'divide' needs a non-zero 'value'.")
    if method == "meanstd" and ("mean" not in params or "std" not in params):
        raise ModelError(f"Model card '{card.name}': scaling 'meanstd' needs 'mean' and 'std' lists.")
    return params


def _to_input_units(raw: np.ndarray, params: dict[str, Any], complex_input: bool) -> np.ndarray:
    """float32 values in the units the method's statistics are taken in (dB for SAR)."""
    if complex_input or np.iscomplexobj(raw):
        values = np.abs(raw).astype(np.float32) ** 2
        linear = True
    else:
        values = raw.astype(np.float32, copy=False)
        linear = params.get("input_units", "db") == "linear"
    if params.get("method") == "db" and linear:
        values = 10.0 * np.log10(np.maximum(values, DB_FLOOR_LINEAR))
    return values


def compute_scaling_stats(
    dataset_or_path: Union[str, Path, Any],
    card: ModelCard,
    band_indexes: Optional[list[int]] = None,
    replicate_to: Optional[int] = None,
) -> ScalingStats:
    """Statistics for a whole raster from one decimated read (overviews when present)."""
    from ..io import raster_io

    params = _scaling_params(card)
    method = params["method"]
    with raster_io.opened(dataset_or_path) as ds:
        if band_indexes is None:
            band_indexes, replicate_to = resolve_bands(ds.count, card, raster_io.alpha_band(ds))
        complex_input = np.dtype(ds.dtypes[band_indexes[0] - 1]).kind == "c"
        stats = ScalingStats(
            method, list(band_indexes), int(replicate_to or len(band_indexes)), complex_input=complex_input
        )
        needs_percentiles = method == "percentile" or (method == "db" and "clip_db" not in params)
        if not needs_percentiles:
            if method == "db":
                lo, hi = (float(v) for v in params["clip_db"])
                stats.low, stats.high = [lo] * len(band_indexes), [hi] * len(band_indexes)
            return stats
        scale = min(1.0, STATS_MAX_SIDE / max(ds.width, ds.height))
        out_shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
        sample, valid = raster_io.read_block(ds, band_indexes, out_shape=out_shape)
    values = _to_input_units(sample, params, complex_input)
    valid = valid & np.isfinite(values).all(axis=0)
    low_pct, high_pct = float(params.get("low", 2)), float(params.get("high", 98))
    for band in values:
        pixels = band[valid]
        if pixels.size == 0:
            # All-nodata raster: any values do, nothing will be predicted.
            stats.low.append(0.0)
            stats.high.append(1.0)
            continue
        lo, hi = np.percentile(pixels, [low_pct, high_pct])
        stats.low.append(float(lo))
        stats.high.append(float(hi))
    return stats


# Statistics of the rasters seen last in this process: the same layer run again (another extent, a mask,
# a second look after zooming in) reuses them, so its scaling never follows the chosen area.
_STATS_CACHE: OrderedDict[tuple, ScalingStats] = OrderedDict()
STATS_CACHE_SIZE = 32


def _raster_identity(dataset) -> Optional[tuple]:
    """What identifies a raster's pixels here: its path with size and modification time, and its shape."""
    name = str(getattr(dataset, "name", "") or "")
    try:
        status = os.stat(name)
    except OSError:
        return None  # an in-memory or remote dataset: computed every time
    shape = (dataset.width, dataset.height, dataset.count, tuple(dataset.transform)[:6])
    return (os.path.realpath(name), status.st_size, status.st_mtime_ns, shape)


def cached_scaling_stats(dataset, card: ModelCard, band_indexes: list[int], replicate_to: int) -> ScalingStats:
    """compute_scaling_stats of the whole raster, computed once per raster and scaling in this process."""
    identity = _raster_identity(dataset)
    key = None
    if identity is not None:
        key = (identity, tuple(band_indexes), replicate_to, json.dumps(card.scaling, sort_keys=True, default=str))
        cached = _STATS_CACHE.get(key)
        if cached is not None:
            _STATS_CACHE.move_to_end(key)
            return copy.deepcopy(cached)
    stats = compute_scaling_stats(dataset, card, band_indexes, replicate_to)
    if key is not None:
        _STATS_CACHE[key] = copy.deepcopy(stats)
        while len(_STATS_CACHE) > STATS_CACHE_SIZE:
            _STATS_CACHE.popitem(last=False)
    return stats


def apply_scaling(
    raw: np.ndarray, valid_mask: Optional[np.ndarray], stats: ScalingStats, card: ModelCard
) -> np.ndarray:
    """Scale a (bands, H, W) raw read to the model's float32 (in_channels, H, W) input."""
    if raw.ndim != 3 or raw.shape[0] != len(stats.band_indexes):
        raise InputError(
            f"Expected {len(stats.band_indexes)} bands to scale, got an array of shape {raw.shape}. "
            "This is a bug in the caller; please report it."
        )
    params = _scaling_params(card)
    method = params["method"]
    values = _to_input_units(raw, params, stats.complex_input)
    if values is raw or not values.flags.writeable:
        values = values.copy()
    # In-place arithmetic: this runs on every tile, on the critical path of inference.
    if method == "divide":
        values *= np.float32(1.0 / float(params["value"]))
    elif method in ("percentile", "db"):
        low = np.asarray(stats.low, np.float32).reshape(-1, 1, 1)
        span = np.maximum(np.asarray(stats.high, np.float32).reshape(-1, 1, 1) - low, np.float32(1e-6))
        values -= low
        values *= np.float32(1.0) / span
        np.clip(values, 0.0, 1.0, out=values)
    if stats.replicate_to > values.shape[0]:
        # Panchromatic into an RGB model: grey R = G = B, then each channel's own mean/std.
        values = np.repeat(values, stats.replicate_to // values.shape[0], axis=0)
    if "mean" in params and "std" in params:
        mean = _per_band(params["mean"], values.shape[0], card, "mean")
        std = _per_band(params["std"], values.shape[0], card, "std")
        values -= mean
        values *= np.float32(1.0) / np.maximum(std, np.float32(1e-12))
    if raw.dtype.kind in "fc":
        np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if valid_mask is not None and not valid_mask.all():
        values[:, ~valid_mask] = 0.0
    return np.ascontiguousarray(values, dtype=np.float32)


def _per_band(values: Any, band_count: int, card: ModelCard, what: str) -> np.ndarray:
    array = np.asarray(values, np.float32).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, band_count)
    elif array.size != band_count:
        raise ModelError(
            f"Model card '{card.name}': scaling.{what} has {array.size} values for {band_count} bands. Fix the card."
        )
    return array.reshape(-1, 1, 1)
