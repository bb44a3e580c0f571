"""What a prediction is asked for (InferenceOptions) and what it reports (InferenceResult), with their checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..common.errors import InputError
from ..zoo.modelcard import ModelCard

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class InferenceOptions:
    device: str = "auto"  # auto|cpu|cuda|cuda:N|mps
    tta: bool = False  # apply card.tta policy (EO d4, SAR lr)
    tile_size: Optional[int] = None  # default card.tile_size
    overlap: Optional[int] = None  # default card.overlap
    batch_size: Optional[int] = None
    precision: str = "auto"  # auto|fp32|bf16|fp16
    output_dtype: str = "uint8"  # uint8|float32
    look_direction_flip: bool = False  # SAR strips imaged from the other side: rotate tiles 180 degrees
    num_threads: Optional[int] = None
    resample_to_model_gsd: bool = True  # False: run at the raster's own GSD whatever it is
    # The threshold the polygons will use (recorded in the raster's FOOTPRINT_THRESHOLD tag); None: the card's.
    threshold: Optional[float] = None
    # Only this part of the raster, (column, row, width, height) in its pixels; None: all of it. The whole
    # raster's statistics and tile grid are used, so the result there is the whole raster's.
    window: Optional[tuple[int, int, int, int]] = None


@dataclass
class InferenceResult:
    probability_path: Path
    heads: list[str]
    device: str
    device_name: str
    device_note: str
    precision: str
    width: int
    height: int
    megapixels: float
    seconds: float
    resampled: bool
    warnings: list[str]
    crs_wkt: Optional[str]
    gsd_m: float
    tiles: int = 0
    tiles_skipped: int = 0
    batch_size: int = 0
    stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # seconds per stage (statistics, read, network, write, cog...)
    precision_check: dict = field(default_factory=dict)  # the reduced-precision gate's figures, when it ran


def check_batch_size(batch_size: Optional[int]) -> None:
    """A batch size, when given, is a whole number >= 1 (0 or -3 would never run a tile)."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(
            f"Batch size must be a whole number of at least 1, not {batch_size!r}. Leave it empty for automatic."
        )


def check_tile_settings(card: ModelCard, options: InferenceOptions) -> tuple[int, int]:
    """(tile, overlap) from the options or the card, checked."""
    tile = int(options.tile_size or card.tile_size)
    overlap = int(card.overlap if options.overlap is None else options.overlap)
    if tile < 32 or tile % 32:
        raise InputError(f"Tile size must be a multiple of 32 and at least 32, not {tile}.")
    if not 0 <= overlap < tile // 2:
        raise InputError(f"Overlap must be between 0 and half the tile size ({tile // 2}), not {overlap}.")
    return tile, overlap
