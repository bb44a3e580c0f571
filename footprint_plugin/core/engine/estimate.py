"""Job size, said before the work starts: megapixels, tiles, expected time at the measured speed, disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from ..common.errors import FootprintError, OutputError
from ..io import raster_io
from ..zoo.modelcard import ModelCard
from .options import InferenceOptions, InferenceResult, check_tile_settings
from .planning import check_window, plan_grid
from .runner import tta_transforms
from .tiling import TileGrid

# Warn before jobs expected to run longer than this, or larger than this many megapixels.
WARN_SECONDS = 30 * 60
WARN_MEGAPIXELS = 2000.0
# Until a speed is measured on this machine: CPU model-grid megapixels per second per forward pass.
DEFAULT_MP_PER_S = {"cpu": 0.5, "cuda": 8.0, "mps": 2.0}
# Stored bytes per output pixel and head, relative to raw: the DEFLATE scratch copy plus the COG with
# overviews, as measured on real probability rasters (mostly ~0), and the least it can ever be.
TYPICAL_DISK_FACTOR = 0.35 + 0.25 * 1.34
MINIMUM_DISK_FACTOR = 0.05
SPEED_CACHE_ENV = "FOOTPRINT_CACHE_DIR"


@dataclass
class JobEstimate:
    """What a job will cost, computed from the raster's header before any pixel is read."""

    megapixels: float
    model_megapixels: float
    tiles: int
    passes: int
    mp_per_s: float
    measured: bool
    seconds: float
    disk_bytes: int
    free_bytes: Optional[int]

    def describe(self) -> str:
        speed = "measured here" if self.measured else "a first guess until one run is measured"
        text = (
            f"Job: {self.megapixels:,.0f} MP ({self.tiles:,} tiles x {self.passes} pass(es)), about "
            f"{_duration(self.seconds)} at {self.mp_per_s:.2g} MP/s ({speed}); probability raster about "
            f"{self.disk_bytes / 1e9:.2g} GB"
        )
        if self.free_bytes is not None:
            text += f", {self.free_bytes / 1e9:.3g} GB free"
        return text + "."

    @property
    def is_large(self) -> bool:
        return self.seconds > WARN_SECONDS or self.megapixels > WARN_MEGAPIXELS


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _speed_cache() -> Path:
    import os

    base = os.environ.get(SPEED_CACHE_ENV) or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "footprint_plugin" / "speed.json"


def _speed_key(card: ModelCard, device_kind: str, tile: int) -> str:
    return f"{card.architecture}|{card.in_channels}|{tile}|{device_kind}"


def measured_speed(card: ModelCard, device_kind: str, tile: int) -> Optional[float]:
    """Model-grid MP/s per pass of the last run with this architecture on this kind of device, if any."""
    import json

    try:
        value = json.loads(_speed_cache().read_text(encoding="utf-8")).get(_speed_key(card, device_kind, tile))
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def remember_speed(card: ModelCard, result: InferenceResult, passes: int, tile: int) -> None:
    """Store this run's speed for the next estimate (best effort: a read-only home is fine)."""
    import json

    from ..io.atomic import write_text_atomically

    if result.seconds <= 1.0 or result.megapixels < 0.5:
        return  # too small to say anything about speed
    path = _speed_cache()
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        kind = torch.device(result.device).type
        data[_speed_key(card, kind, tile)] = round(result.megapixels * passes / result.seconds, 4)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(data, indent=1))
    except (OSError, ValueError, AttributeError, FootprintError):
        pass


def tta_passes(card: ModelCard, options: InferenceOptions, square: bool = True) -> int:
    return len(tta_transforms(card.tta if options.tta else "none", square))


def estimate_job(
    raster_path: Union[str, Path], card: ModelCard, options: InferenceOptions, out_path: Union[str, Path]
) -> JobEstimate:
    """Megapixels, expected time at the measured speed and disk for the probability raster."""
    from ..io.paths import free_bytes

    options = options or InferenceOptions()
    tile, overlap = check_tile_settings(card, options)
    with raster_io.gdal_env(), raster_io.opened(raster_path) as dataset:
        plan = plan_grid(dataset, card, options)
        plan.window = check_window(options.window, dataset.width, dataset.height)
    grid = TileGrid.for_raster(plan.model_width, plan.model_height, tile, overlap)
    col, _row, width, height = plan.out_window
    first_row, stop_row = plan.model_rows()
    columns = grid.tiles_overlapping(int(col / plan.kx), max(int(col / plan.kx) + 1, int((col + width) / plan.kx)))
    tiles = len(columns) * sum(1 for y in grid.ys if y < stop_row and y + grid.tile_h > first_row)
    passes = tta_passes(card, options, grid.tile_h == grid.tile_w)
    kind = "cuda" if options.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    if options.device == "auto" and torch.cuda.is_available():
        kind = "cuda"
    speed = measured_speed(card, kind, tile)
    mp_per_s = speed or DEFAULT_MP_PER_S.get(kind, 0.5)
    # Work is tiles x tile area (overlaps run twice), not raster area.
    work_mp = tiles * grid.tile_h * grid.tile_w / 1e6 * passes
    bytes_per_pixel = (1 if options.output_dtype == "uint8" else 4) * len(card.heads)
    raw = width * height * bytes_per_pixel
    return JobEstimate(
        megapixels=width * height / 1e6,
        model_megapixels=width * height / (plan.kx * plan.ky) / 1e6,
        tiles=tiles,
        passes=passes,
        mp_per_s=mp_per_s / passes,
        measured=speed is not None,
        seconds=work_mp / mp_per_s,
        disk_bytes=int(raw * TYPICAL_DISK_FACTOR),
        free_bytes=free_bytes(out_path),
    )


def check_disk(estimate: JobEstimate, out_path: Union[str, Path]) -> Optional[str]:
    """Refuse a job whose probability raster cannot fit the disk even at the best compression;
    return a warning when it probably will not fit."""
    free = estimate.free_bytes
    if free is None:
        return None
    least = estimate.disk_bytes * MINIMUM_DISK_FACTOR / TYPICAL_DISK_FACTOR
    if least > free:
        raise OutputError(
            f"Not enough disk space for the probability raster of this job in {Path(out_path).parent}: it needs at "
            f"least {least / 1e9:.3g} GB, {free / 1e9:.3g} GB are free. {estimate.describe()} Free some space, "
            "write to another disk, or limit the job with an extent."
        )
    if estimate.disk_bytes > free:
        folder = Path(out_path).parent
        return f"The probability raster may not fit the {free / 1e9:.3g} GB free in {folder}: {estimate.describe()}"
    return None
