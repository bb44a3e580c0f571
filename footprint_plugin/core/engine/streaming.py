"""One prediction's tile loop: strips read top to bottom per column window, tiles scaled, run, blended, and
finished rows streamed to the writer."""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from ..common.callbacks import check_canceled
from ..io import raster_io
from .planning import ColumnWindow, GridResampler
from .scaling import apply_scaling
from .tiling import pad_tile

# Progress before the first tile: the statistics pass and the model load can take seconds (a large
# raster without overviews, a model read from disk and prepared), so the bar moves during them too.
PROGRESS_STATS = (0.0, 0.05)
PROGRESS_MODEL = (0.05, 0.08)
PROGRESS_TILES = (PROGRESS_MODEL[1], 0.95)


def read_valid_rows(
    dataset, band_indexes: list[int], row: int, count: int, columns: Optional[tuple[int, int]] = None
) -> np.ndarray:
    """Validity of input rows [row, row + count) (in a column window) at full resolution
    (no data read when none can be invalid)."""
    from rasterio.enums import MaskFlags
    from rasterio.windows import Window

    first, stop = columns or (0, dataset.width)
    flags = [dataset.mask_flag_enums[b - 1] for b in band_indexes]
    float_data = any(np.dtype(dataset.dtypes[b - 1]).kind in "fc" for b in band_indexes)
    if all(f == [MaskFlags.all_valid] for f in flags) and not float_data:
        return np.ones((count, stop - first), bool)
    _data, valid = raster_io.read_block(dataset, band_indexes, window=Window(first, row, stop - first, count))
    return valid


class TileJob:
    """State shared by every window of one prediction: dataset, grids, network, writer, counters.

    The tile grid is the whole raster's (anchored at its first pixel); with a window (plan.window) only the
    tiles that touch it run and only its rows and columns are written, so the result inside a window is
    the whole raster's result there.
    """

    def __init__(self, dataset, card, plan, grid, band_indexes, stats, batches, writer, report, is_canceled) -> None:
        self.dataset, self.card, self.plan, self.grid = dataset, card, plan, grid
        self.band_indexes, self.stats, self.batches, self.writer = band_indexes, stats, batches, writer
        self.report, self.is_canceled = report, is_canceled
        self.heads = len(card.heads)
        self.done_tiles = self.skipped_tiles = 0
        self.model_rows = plan.model_rows()
        first, stop = self.model_rows
        self.ys = [y for y in grid.ys if y < stop and y + grid.tile_h > first]
        # fp32 outputs of the tiles the precision gate ran, by (x, y): used instead of running them again.
        self.known: dict[tuple[int, int], np.ndarray] = {}
        self.precision_check: dict = {}
        self.timings = dict.fromkeys(("read", "scale", "network", "blend", "write"), 0.0)
        self.tile_passes = 1.0  # > 1 when seam tiles run for two windows
        self.total_tiles = len(self.ys) * len(grid.xs)

    def progress(self) -> None:
        first, last = PROGRESS_TILES
        self.report(first + (last - first) * self.done_tiles / max(1.0, self.total_tiles * self.tile_passes))

    def read_model_rect(self, x: int, y: int, cols: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The model-grid rectangle (C, rows, cols) at (x, y), with validity (resampled on the fly)."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        started = time.perf_counter()
        plan = self.plan
        if not plan.resampled:
            read = raster_io.read_block(self.dataset, self.band_indexes, window=Window(x, y, cols, rows))
        else:
            read = raster_io.read_block(
                self.dataset,
                self.band_indexes,
                window=Window(x * plan.kx, y * plan.ky, cols * plan.kx, rows * plan.ky),
                out_shape=(rows, cols),
                resampling=Resampling.average if plan.ky > 1 else Resampling.bilinear,
            )
        self.timings["read"] += time.perf_counter() - started
        return read

    def scaled_tile(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """One tile's raw pixels scaled and padded to the tile size."""
        started = time.perf_counter()
        scaled = apply_scaling(pixels, valid, self.stats, self.card)
        tile = pad_tile(scaled, self.grid.tile_h, self.grid.tile_w)
        self.timings["scale"] += time.perf_counter() - started
        return tile

    def sample_tiles(self, count: int, xs: list[int]) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
        """Up to `count` scaled tiles with valid pixels, spread evenly over the tiles this job runs
        (tile rows self.ys, tile columns `xs`)."""
        grid = self.grid
        positions = [(x, y) for y in self.ys for x in xs]
        # 4 x count evenly spaced candidates, every 4th first: the first `count` are spread over the raster,
        # the others stand in for empty (all nodata) ones.
        spaced = [(k % 4, int((k + 0.5) * len(positions) / (4 * count))) for k in range(4 * count)]
        order = list(dict.fromkeys(index for _rank, index in sorted(spaced)))
        keys, tiles = [], []
        for index in order:
            x, y = positions[index]
            w, h = min(grid.tile_w, self.plan.model_width - x), min(grid.tile_h, self.plan.model_height - y)
            pixels, valid = self.read_model_rect(x, y, w, h)
            if valid.any():
                keys.append((x, y))
                tiles.append(self.scaled_tile(pixels, valid))
            if len(tiles) == count:
                break
        return keys, tiles

    def accumulate_row(self, window: ColumnWindow, y0: int, strip, valid, accumulator: np.ndarray) -> None:
        """Run every tile of one tile row of the window and add its weighted probabilities."""
        grid = self.grid
        strip_h = strip.shape[1]
        pending: list[tuple[int, Optional[np.ndarray], Optional[np.ndarray]]] = []
        for index, x0 in enumerate(window.xs):
            local = x0 - window.tiles_first
            w = min(grid.tile_w, self.plan.model_width - x0)
            tile_valid = valid[:, local : local + w]
            self.done_tiles += 1
            known = self.known.pop((x0, y0), None)
            if known is not None:
                pending.append((local, None, known))
            elif tile_valid.any():
                pending.append((local, self.scaled_tile(strip[:, :, local : local + w], tile_valid), None))
            else:
                self.skipped_tiles += 1
            to_run = sum(1 for _x, tile, _p in pending if tile is not None)
            if pending and (to_run >= self.batches.batch_size or index == len(window.xs) - 1):
                self._add_batch(pending, strip_h, accumulator)
                pending.clear()
                check_canceled(self.is_canceled)
                self.progress()
        self.progress()

    def _add_batch(self, pending, strip_h: int, accumulator: np.ndarray) -> None:
        """Run the pending tiles that need it and add every pending tile's weighted probabilities."""
        started = time.perf_counter()
        tiles = [tile for _x, tile, _p in pending if tile is not None]
        outputs = iter(self.batches.run(tiles) if tiles else [])
        self.timings["network"] += time.perf_counter() - started
        started = time.perf_counter()
        weights = self.grid.weights
        for lx, tile, known in pending:
            prob = next(outputs) if tile is not None else known
            w = min(self.grid.tile_w, accumulator.shape[2] - lx)
            accumulator[:, :strip_h, lx : lx + w] += prob[:, :strip_h, :w] * weights[:strip_h, :w]
        self.timings["blend"] += time.perf_counter() - started

    def run_window(self, window: ColumnWindow) -> None:
        """Tile rows top to bottom over one column window; finished rows stream to the writer."""
        grid, plan = self.grid, self.plan
        accumulator = np.zeros((self.heads, grid.tile_h, window.tiles_stop - window.tiles_first), np.float32)
        emit = self.emitter(window)
        lo, hi = window.model_first - window.tiles_first, window.model_stop - window.tiles_first
        norm_x = grid.norm_x[window.model_first : window.model_stop]
        first_row, stop_row = self.model_rows
        for row_index, y0 in enumerate(self.ys):
            check_canceled(self.is_canceled)
            strip_h = min(grid.tile_h, plan.model_height - y0)
            strip, valid = self.read_model_rect(window.tiles_first, y0, window.tiles_stop - window.tiles_first, strip_h)
            self.accumulate_row(window, y0, strip, valid, accumulator)
            last_row = row_index == len(self.ys) - 1
            finished = strip_h if last_row else self.ys[row_index + 1] - y0
            # Rows before the window's first model row may lack earlier tile rows: they are not written.
            top, bottom = max(y0, first_row) - y0, min(y0 + finished, stop_row) - y0
            if bottom > top:
                started = time.perf_counter()
                norm = grid.norm_y[y0 + top : y0 + bottom, None] * norm_x[None, :]
                rows = accumulator[:, top:bottom, lo:hi] / norm
                self.timings["blend"] += time.perf_counter() - started
                emit(rows, valid[top:bottom, lo:hi])
            if not last_row:
                accumulator[:, : grid.tile_h - finished] = accumulator[:, finished:]
                accumulator[:, grid.tile_h - finished :] = 0.0

    def emitter(self, window: ColumnWindow) -> Callable[[np.ndarray, np.ndarray], None]:
        """Where a window's finished model rows go: the writer, through the resampler when resampled."""
        plan = self.plan
        col, row, _width, height = plan.out_window
        columns = (window.first, window.stop)
        out_columns = (window.first - col, window.stop - col)

        def write(prob: np.ndarray, valid: np.ndarray) -> None:
            started = time.perf_counter()
            self.writer.write_rows(prob, valid, out_columns)
            self.timings["write"] += time.perf_counter() - started

        if not plan.resampled:
            return write
        rows = (row, row + height)
        resampler = GridResampler(
            plan.width, plan.height, plan.model_width, plan.model_height, self.heads, columns, rows
        )

        def emit(prob: np.ndarray, valid: np.ndarray) -> None:
            started = time.perf_counter()
            first, rows = resampler.push(np.where(valid[None], prob, np.float32(0.0)))
            self.timings["blend"] += time.perf_counter() - started
            if rows.shape[1]:
                in_valid = read_valid_rows(self.dataset, self.band_indexes, first, rows.shape[1], columns)
                write(rows, in_valid)

        return emit
