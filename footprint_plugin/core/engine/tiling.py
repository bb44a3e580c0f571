"""Tile geometry shared by inference and training validation: tile starts, padding, rounding, blend weights.

Both use exactly these functions, so validation during training scores what Detect buildings will
produce. Everything here is plain numpy (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Weight of tile-border pixels: tiny but non-zero, so raster-border pixels (covered by one tile) stay defined.
WEIGHT_FLOOR = 1e-3
# Networks here downsample 5 times: tile sides must be multiples of 32.
TILE_MULTIPLE = 32


def round_up(value: int, multiple: int = TILE_MULTIPLE) -> int:
    """The smallest multiple of `multiple` that is >= value."""
    return int(math.ceil(value / multiple) * multiple)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length); the last tile ends at `length`."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


def blend_ramp(tile: int, overlap: int) -> np.ndarray:
    """1-D weights for one tile: ~0 within overlap/4 of its edge, rising to 1 at 3*overlap/4."""
    if overlap <= 0:
        return np.ones(tile, np.float32)
    distance = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float32)
    ramp = (distance + 0.5 - overlap / 4.0) / (overlap / 2.0)
    return np.clip(ramp, WEIGHT_FLOOR, 1.0).astype(np.float32)


def weight_sums(length: int, starts: list[int], ramp: np.ndarray) -> np.ndarray:
    """Sum of all tiles' 1-D weights at each position (the blend's normaliser along one axis)."""
    total = np.zeros(length, np.float64)
    for start in starts:
        n = min(len(ramp), length - start)
        total[start : start + n] += ramp[:n]
    return total.astype(np.float32)


def pad_tile(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad a (C, h, w) tile cut at the raster edge to (C, height, width), mirroring its content."""
    pad_h, pad_w = height - tile.shape[-2], width - tile.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return tile
    mode = "reflect" if min(tile.shape[-2:]) > 1 else "edge"
    return np.pad(tile, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)


def tile_shape(rows: int, cols: int, tile: int) -> tuple[int, int]:
    """(tile height, tile width): the tile size, or a smaller multiple of 32 for a raster smaller than a tile."""
    return (tile if rows >= tile else round_up(rows)), (tile if cols >= tile else round_up(cols))


@dataclass
class TileGrid:
    """Where the tiles of one raster go and how they are blended (both axes)."""

    width: int
    height: int
    tile_h: int
    tile_w: int
    overlap: int

    def __post_init__(self) -> None:
        self.xs = tile_starts(self.width, self.tile_w, self.overlap)
        self.ys = tile_starts(self.height, self.tile_h, self.overlap)
        self.ramp_x, self.ramp_y = blend_ramp(self.tile_w, self.overlap), blend_ramp(self.tile_h, self.overlap)
        self.norm_x = weight_sums(self.width, self.xs, self.ramp_x)
        self.norm_y = weight_sums(self.height, self.ys, self.ramp_y)
        self.weights = np.outer(self.ramp_y, self.ramp_x)  # sliced per tile instead of rebuilt per tile

    @classmethod
    def for_raster(cls, width: int, height: int, tile: int, overlap: int) -> TileGrid:
        tile_h, tile_w = tile_shape(height, width, tile)
        return cls(width, height, tile_h, tile_w, overlap)

    @property
    def n_tiles(self) -> int:
        return len(self.xs) * len(self.ys)

    def tiles_overlapping(self, first: int, stop: int) -> list[int]:
        """Tile column starts whose tiles touch columns [first, stop)."""
        return [x for x in self.xs if x < stop and x + self.tile_w > first]

    def column_windows(self, max_width: int, align: int = 1) -> list[tuple[int, int]]:
        """[first, stop) column ranges of at most ~max_width, split at multiples of `align`.

        Memory then follows the window width, not the raster width: each window is processed top to
        bottom on its own, and tiles that straddle a seam are run for both windows, so the blend across
        a seam is exactly the blend inside a window.
        """
        if self.width <= max_width:
            return [(0, self.width)]
        step = max(align, (max_width // align) * align)
        bounds = list(range(0, self.width, step)) + [self.width]
        return list(zip(bounds[:-1], bounds[1:]))
