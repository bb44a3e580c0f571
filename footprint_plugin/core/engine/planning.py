"""Where the model runs: the model grid (the input grid, or resampled to the model's GSD), the column
windows that bound memory, and the streaming interpolation back onto the input grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..common.errors import InputError
from ..io import raster_io
from ..zoo.modelcard import ModelCard
from .options import InferenceOptions
from .tiling import TileGrid

# Resample when the raster's GSD differs from the model's by more than this factor.
GSD_TOLERANCE = 1.25
# Upsampling beyond this adds no detail and multiplies the work by its square: refuse instead.
MAX_UPSAMPLING = 8.0
# Widest column window processed at once (input and model pixels): memory follows this, not the
# raster's width. A multiple of the output block (256), so every output block is written once.
MAX_WINDOW_WIDTH = 8192


class GridResampler:
    """Bilinearly interpolates model-grid rows (arriving top to bottom) onto the input grid.

    Pixel centres are matched (GDAL's half-pixel convention), edges are clamped. With `columns`
    (input columns [first, stop)), only that column window is produced, from model rows that start
    at model column `model_first` (see ``model_columns``).
    """

    def __init__(
        self,
        in_width: int,
        in_height: int,
        model_width: int,
        model_height: int,
        heads: int,
        columns: Optional[tuple[int, int]] = None,
        rows: Optional[tuple[int, int]] = None,
    ) -> None:
        self.in_height, self.model_height = in_height, model_height
        self.scale_y = model_height / in_height
        first, stop = columns or (0, in_width)
        x0, x1, wx = _bilinear_columns(in_width, model_width)
        # Full rows when no window is given; else exactly the model columns the window needs.
        self.model_first = 0 if columns is None else int(x0[first])
        model_stop = model_width if columns is None else int(x1[stop - 1]) + 1
        self.x0, self.x1 = x0[first:stop] - self.model_first, x1[first:stop] - self.model_first
        self.wx = wx[first:stop]
        self.buffer = np.zeros((heads, 0, model_stop - self.model_first), np.float32)
        self.next_row, self.stop_row = rows or (0, in_height)  # next input row to produce, and the end
        # Model rows before the buffer: all of them arrive for full rows, else from the first one needed.
        self.received = 0 if rows is None else int(self._source_rows(np.array([self.next_row]))[0][0])
        self.buffer_start = self.received  # model row of buffer[:, 0]

    def model_rows(self) -> tuple[int, int]:
        """[first, stop) model rows the requested input rows are interpolated from."""
        y0, y1, _w = self._source_rows(np.array([self.next_row, self.stop_row - 1]))
        return int(y0[0]), int(y1[1]) + 1

    def _source_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fy = np.clip((rows + 0.5) * self.scale_y - 0.5, 0, self.model_height - 1)
        y0 = np.floor(fy).astype(np.int64)
        y1 = np.minimum(y0 + 1, self.model_height - 1)
        return y0, y1, (fy - y0).astype(np.float32)

    def _ready_until(self) -> int:
        """One past the last input row whose lower source row has arrived."""
        if self.received >= self.model_height:
            return self.stop_row
        candidates = np.arange(self.next_row, self.stop_row)
        _y0, y1, _w = self._source_rows(candidates)
        ready = np.nonzero(y1 >= self.received)[0]
        return self.next_row + (int(ready[0]) if ready.size else candidates.size)

    def push(self, rows: np.ndarray) -> tuple[int, np.ndarray]:
        """Add model rows; return (first input row, interpolated rows (heads, n, window width))."""
        self.buffer = np.concatenate([self.buffer, rows], axis=1)
        self.received += rows.shape[1]
        first, last = self.next_row, self._ready_until()
        out_rows = np.arange(first, last)
        if out_rows.size == 0:
            return first, np.zeros((self.buffer.shape[0], 0, self.x0.size), np.float32)
        y0, y1, wy = self._source_rows(out_rows)
        top = self.buffer[:, y0 - self.buffer_start]
        bottom = self.buffer[:, y1 - self.buffer_start]
        rows_interp = top + (bottom - top) * wy[None, :, None]
        out = rows_interp[:, :, self.x0] + (rows_interp[:, :, self.x1] - rows_interp[:, :, self.x0]) * self.wx
        self.next_row = last
        if self.next_row < self.stop_row:
            # Rows not yet received cannot be dropped: buffer[:, 0] must stay model row buffer_start.
            keep_from = min(int(self._source_rows(np.array([self.next_row]))[0][0]), self.received)
            self.buffer = self.buffer[:, keep_from - self.buffer_start :]
            self.buffer_start = keep_from
        return first, out.astype(np.float32)


def _bilinear_columns(in_width: int, model_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each input column: left and right model column and the weight of the right one."""
    fx = np.clip((np.arange(in_width) + 0.5) * (model_width / in_width) - 0.5, 0, model_width - 1)
    x0 = np.floor(fx).astype(np.int64)
    return x0, np.minimum(x0 + 1, model_width - 1), (fx - x0).astype(np.float32)


@dataclass
class GridPlan:
    """The input grid and the grid the model runs on (resampled to the model's GSD, or the same)."""

    width: int
    height: int
    model_width: int
    model_height: int
    gsd: Optional[float]
    resampled: bool
    notes: list[str]
    # The part of the raster to predict, (column, row, width, height) in input pixels; None: all of it.
    # The model grid and its tiles stay the whole raster's, so a window gets the whole raster's result.
    window: Optional[tuple[int, int, int, int]] = None

    @property
    def out_window(self) -> tuple[int, int, int, int]:
        return self.window or (0, 0, self.width, self.height)

    def model_rows(self) -> tuple[int, int]:
        """[first, stop) model-grid rows the window's input rows need."""
        _col, row, _w, height = self.out_window
        if self.window is None:
            return 0, self.model_height
        if not self.resampled:
            return row, row + height
        resampler = GridResampler(1, self.height, 1, self.model_height, 1, rows=(row, row + height))
        return resampler.model_rows()

    @property
    def kx(self) -> float:
        return self.width / self.model_width

    @property
    def ky(self) -> float:
        return self.height / self.model_height


def check_window(
    window: Optional[tuple[int, int, int, int]], width: int, height: int
) -> Optional[tuple[int, int, int, int]]:
    """A (column, row, width, height) pixel window clipped to the raster; None for the whole raster."""
    if window is None:
        return None
    col, row, w, h = (int(v) for v in window)
    first_col, first_row = max(0, col), max(0, row)
    stop_col, stop_row = min(width, col + w), min(height, row + h)
    if stop_col <= first_col or stop_row <= first_row:
        raise InputError(
            f"The area to process ({w} x {h} pixels at column {col}, row {row}) does not overlap the raster "
            f"({width} x {height} pixels). Pick an extent or mask inside the raster's footprint."
        )
    if (first_col, first_row, stop_col, stop_row) == (0, 0, width, height):
        return None
    return first_col, first_row, stop_col - first_col, stop_row - first_row


def pixel_window(raster_path, bounds: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """(column, row, width, height) of the raster's pixels that cover `bounds` (xmin, ymin, xmax, ymax in the
    raster's CRS), widened to whole pixels of the raster's own grid and clipped to the raster."""
    import math

    from rasterio.windows import from_bounds

    with raster_io.gdal_env(), raster_io.opened(raster_path) as dataset:
        window = from_bounds(*bounds, transform=dataset.transform)
        width, height = dataset.width, dataset.height
    # A hair's tolerance: bounds taken from the raster's own pixel edges must not grow by a pixel.
    col, row = math.floor(window.col_off + 1e-6), math.floor(window.row_off + 1e-6)
    stop_col = math.ceil(window.col_off + window.width - 1e-6)
    stop_row = math.ceil(window.row_off + window.height - 1e-6)
    return check_window((col, row, stop_col - col, stop_row - row), width, height) or (0, 0, width, height)


def plan_grid(dataset, card: ModelCard, options: InferenceOptions) -> GridPlan:
    """Decide whether to resample to the model's GSD, with the notes a user should read."""
    width, height = dataset.width, dataset.height
    gsd = raster_io.raster_gsd_m(dataset)
    notes: list[str] = []
    if gsd is None and dataset.crs is not None:
        notes.append(
            "The raster has a coordinate reference system but no georeferencing (geotransform): working in "
            f"pixel units and assuming the model's GSD ({card.gsd_m:g} m), so areas are not square metres. "
            "Georeference it (QGIS Georeferencer, or gdal_translate -a_ullr) for real sizes."
        )
    elif gsd is None:
        notes.append(
            "The raster has no coordinate reference system: working in pixel units and assuming the "
            f"model's GSD ({card.gsd_m:g} m). Assign a CRS in QGIS for areas in square metres."
        )
    ratio = 1.0 if gsd is None else card.gsd_m / gsd  # input pixels per model pixel
    resampled = bool(options.resample_to_model_gsd and (ratio > GSD_TOLERANCE or ratio < 1.0 / GSD_TOLERANCE))
    if resampled and ratio < 1.0 / MAX_UPSAMPLING:
        raise InputError(
            f"The raster's pixels ({gsd:.3g} m) are {1 / ratio:.0f} times coarser than the model's ({card.gsd_m:g} m): "
            f"buildings are only a pixel or two wide at this resolution, and upsampling {1 / ratio:.0f}x would make "
            f"the job {1 / ratio ** 2:.0f} times larger without adding detail. Use imagery within {MAX_UPSAMPLING:g}x "
            "of the model's GSD, or a model trained near this GSD."
        )
    if not resampled:
        if gsd is not None and abs(ratio - 1.0) > 0.05:
            notes.append(f"The raster's GSD ({gsd:.3g} m) differs from the model's ({card.gsd_m:g} m); not resampled.")
        return GridPlan(width, height, width, height, gsd, False, notes)
    model_width, model_height = max(1, int(width / ratio)), max(1, int(height / ratio))
    notes.append(
        f"The raster's GSD ({gsd:.3g} m) is far from the model's ({card.gsd_m:g} m): it was resampled to "
        f"{model_width} x {model_height} pixels for the model and the probabilities back to the input grid."
    )
    if ratio > 4 or ratio < 0.25:
        notes.append(
            "That is more than 4x: expect poor results. Use a model trained near this GSD "
            "(or train one with 'Train a model')."
        )
    return GridPlan(width, height, model_width, model_height, gsd, True, notes)


@dataclass
class ColumnWindow:
    """One column window: input columns [first, stop), the model columns they need [model_first,
    model_stop), and the tiles (and columns [tiles_first, tiles_stop)) that cover those."""

    first: int
    stop: int
    model_first: int
    model_stop: int
    xs: list[int]
    tiles_first: int
    tiles_stop: int


def column_windows(plan: GridPlan, grid: TileGrid, max_width: Optional[int] = None) -> list[ColumnWindow]:
    """Input-grid column windows of bounded width (in input and model pixels), with their tiles."""
    max_width = max_width or MAX_WINDOW_WIDTH
    input_width = max(raster_io.OUTPUT_BLOCK, int(max_width * min(1.0, plan.kx)))
    col, _row, width, _height = plan.out_window
    if width <= max_width and width / plan.kx <= max_width:
        bounds = [(0, width)]
    else:
        bounds = TileGrid(width, 1, 1, 1, 0).column_windows(input_width, raster_io.OUTPUT_BLOCK)
    # Output blocks are counted from the window's first column; the model grid from the raster's.
    bounds = [(col + first, col + stop) for first, stop in bounds]
    x0, x1, _w = _bilinear_columns(plan.width, plan.model_width) if plan.resampled else (None, None, None)
    windows = []
    for first, stop in bounds:
        if x0 is None:
            model_first, model_stop = first, stop
        else:
            model_first, model_stop = int(x0[first]), int(x1[stop - 1]) + 1
        xs = grid.tiles_overlapping(model_first, model_stop)
        tiles_stop = min(xs[-1] + grid.tile_w, plan.model_width)
        windows.append(ColumnWindow(first, stop, model_first, model_stop, xs, xs[0], tiles_stop))
    return windows
