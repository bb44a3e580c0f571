"""Tiled, blended, streamed inference: a raster of any size in, a probability GeoTIFF out.

How it works:
- The raster is processed in rows of overlapping square tiles. Each tile row is read as one
  full-width strip (a single windowed read, so each source block is decoded about once).
- Every tile is scaled with statistics computed once for the raster (no per-tile seams), run
  through the network (optionally with TTA and a 180-degree look-direction flip), and added to a
  strip accumulator with a separable weight window that fades out over the overlap, so tile
  borders (where the network lacks context) contribute almost nothing.
- Rows that no later tile touches are normalised and streamed to the output. Wide rasters are
  processed in column windows (at most MAX_WINDOW_WIDTH pixels), so memory is bounded by tile
  size x window width, never by the raster's width or height.
- When the raster's GSD is far from the model's, tiles are read resampled to the model GSD (a
  "model grid") and the probabilities are interpolated back onto the input grid while streaming.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled, sub_progress
from ..common.errors import FootprintError, InputError, OutputError
from ..common.vocabulary import resolve_threshold
from ..io import raster_io
from ..models import fuse_conv_activation, fuse_conv_bn, reduced_precision_copy
from ..zoo.modelcard import ModelCard
from .device import DeviceChoice, cpu_supports_bf16, is_out_of_memory, select_device
from .scaling import ScalingStats, apply_scaling, compute_scaling_stats, resolve_bands
from .tiling import TileGrid, pad_tile

_LOG = logging.getLogger(__name__)

# Resample when the raster's GSD differs from the model's by more than this factor.
GSD_TOLERANCE = 1.25
# Upsampling beyond this adds no detail and multiplies the work by its square: refuse instead.
MAX_UPSAMPLING = 8.0
# Widest column window processed at once (input and model pixels): memory follows this, not the
# raster's width. A multiple of the output block (256), so every output block is written once.
MAX_WINDOW_WIDTH = 8192
# bf16 is accepted on CPU only when its masks match fp32's: mask IoU at least 0.98 (the union is
# floored at 1 % of the pixels so a nearly empty batch cannot pass by luck or fail by noise), and no
# probability moves by more than 0.1. A partly trained efficient U-Net measured IoU 0.96-0.97 and
# max 0.19 on real imagery (its masks move as much with input noise of a third of a grey level),
# so it runs in fp32; a model whose masks are stable gets bf16's ~2x speed.
BF16_MIN_MASK_IOU = 0.98
BF16_MAX_PROBABILITY_DIFF = 0.1
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# What the user reads when the reduced-precision check falls back to fp32 (the figures go to the debug log).
BF16_FALLBACK_WARNING = "Using full precision: the faster mode changed the result on this model."


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


# ---------------------------------------------------------------------------------------------
# The network runner: precision, TTA, look-direction flip, OOM handling


def _tta_transforms(policy: str, square: bool) -> list[tuple[Callable, Callable]]:
    identity = (lambda x: x, lambda y: y)
    if policy == "lr":
        return [identity, (lambda x: x.flip(-1), lambda y: y.flip(-1))]
    if policy == "d4":
        transforms = []
        for k in (0, 1, 2, 3) if square else (0, 2):
            for flip in (False, True):

                def forward(x, k=k, flip=flip):
                    return torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))

                def inverse(y, k=k, flip=flip):
                    y = torch.rot90(y, -k, (-2, -1))
                    return y.flip(-1) if flip else y

                transforms.append((forward, inverse))
        return transforms
    return [identity]


class TileRunner:
    """Runs batches of scaled tiles through the network and returns sigmoid probabilities."""

    def __init__(
        self,
        model: nn.Module,
        choice: DeviceChoice,
        precision: str,
        tta_policy: str,
        look_direction_flip: bool,
        square_tiles: bool,
    ) -> None:
        self.model = model
        self.choice = choice
        self.precision = precision
        self.transforms = _tta_transforms(tta_policy, square_tiles)
        self.look_direction_flip = look_direction_flip
        self.notes: list[str] = []
        # Checked between TTA passes: with d4, one batch is eight forward passes, too long to wait for a cancel.
        self.is_canceled: Optional[CancelCallback] = None

        self._cpu_bf16_model: Optional[nn.Module] = None

    @property
    def device(self) -> torch.device:
        return torch.device(self.choice.device)

    def _network(self, precision: str) -> tuple[nn.Module, Any]:
        """(network, autocast context) for a precision on the current device."""
        if precision == "fp32":
            return self.model, contextlib.nullcontext()
        if self.device.type == "cpu" and precision == "bf16":
            # A bf16 copy of the network instead of autocast, so the fused oneDNN conv+activation
            # kernels see bf16 inputs and weights (autocast would cast around them).
            if self._cpu_bf16_model is None:
                self._cpu_bf16_model = reduced_precision_copy(self.model, torch.bfloat16)
            return self._cpu_bf16_model, contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return self.model, torch.autocast(self.device.type, dtype=dtype)

    def run(self, batch: np.ndarray, precision: Optional[str] = None) -> np.ndarray:
        """(B, C, h, w) float32 -> (B, heads, h, w) float32 probabilities."""
        precision = precision or self.precision
        network, autocast = self._network(precision)
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.device.type != "mps":
                x = x.contiguous(memory_format=torch.channels_last)
            if self.look_direction_flip:
                x = torch.rot90(x, 2, (-2, -1))
            total = None
            with autocast:
                for forward, inverse in self.transforms:
                    check_canceled(self.is_canceled)
                    prob = torch.sigmoid(inverse(network(forward(x))).float())
                    total = prob if total is None else total + prob
            assert total is not None
            total = total / len(self.transforms)
            if self.look_direction_flip:
                total = torch.rot90(total, 2, (-2, -1))
            return total.contiguous().cpu().numpy()

    def move_to_cpu(self, reason: str) -> None:
        self.model = self.model.to("cpu")
        self._cpu_bf16_model = None
        previous = self.choice
        self.choice = DeviceChoice("cpu", "CPU", f"{previous.name}: {reason}; continued on the CPU.")
        self.precision = "bf16" if cpu_supports_bf16() and self.precision != "fp32" else "fp32"
        self.notes.append(self.choice.note)


def _resolve_precision(request: str, choice: DeviceChoice) -> tuple[str, bool, list[str]]:
    """(precision, needs the bf16-vs-fp32 mask check, notes)."""
    request = (request or "auto").lower()
    notes: list[str] = []
    if request not in PRECISIONS:
        notes.append(f"Unknown precision '{request}' (use auto, fp32, bf16 or fp16); using auto.")
        request = "auto"
    kind = choice.kind
    if kind == "cuda":
        if request == "auto":
            # fp16 keeps 3 more mantissa bits than bf16 (BN-folded inference stays in range); checked too.
            return "fp16", True, notes
        if request == "bf16" and not torch.cuda.is_bf16_supported():
            notes.append("This GPU has no bf16 support; using fp16.")
            return "fp16", False, notes
        return request, False, notes
    if kind == "mps":
        return ("fp32" if request == "auto" else request), False, notes
    # CPU
    if request == "auto":
        return ("bf16", True, notes) if cpu_supports_bf16() else ("fp32", False, notes)
    if request == "bf16" and not cpu_supports_bf16():
        notes.append("This CPU has no native bf16 (AVX512_BF16 or AMX); using fp32, which is faster here.")
        return "fp32", False, notes
    if request == "fp16":
        notes.append("fp16 is not supported for CPU inference; using fp32.")
        return "fp32", False, notes
    return request, False, notes


def _default_batch_size(choice: DeviceChoice, tile_h: int, tile_w: int) -> int:
    pixels = tile_h * tile_w
    if choice.kind == "cuda":
        free, _total = torch.cuda.mem_get_info(torch.device(choice.device))
        # ~1 KB of activations per pixel covers the largest model here at bf16, with headroom.
        return int(max(1, min(64, (free * 0.6) // (pixels * 1024))))
    if choice.kind == "mps":
        return 4
    # On CPU larger batches gain nothing and cost memory; two 512 px tiles keep both cores busy.
    return max(1, min(4, (2 * 512 * 512) // max(pixels, 1)))


def prepare_model(model: nn.Module, choice: DeviceChoice) -> nn.Module:
    """An eval-mode copy with BatchNorm folded into convolutions, channels_last, on the device.

    The caller's model is left untouched (training passes its live model for validation).
    """
    was_training = model.training
    model.eval()
    try:
        prepared = fuse_conv_bn(copy.deepcopy(model))
    finally:
        model.train(was_training)
    if choice.kind == "cpu":
        prepared = fuse_conv_activation(prepared)
    prepared = prepared.to(choice.device)
    if choice.kind != "mps":
        prepared = prepared.to(memory_format=torch.channels_last)
    for parameter in prepared.parameters():
        parameter.requires_grad_(False)
    return prepared


# ---------------------------------------------------------------------------------------------
# Streaming back onto the input grid when the model grid is resampled


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
        self.buffer_start = 0  # model row of buffer[:, 0]
        self.received = 0
        self.next_row = 0  # next input row to produce

    def _source_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fy = np.clip((rows + 0.5) * self.scale_y - 0.5, 0, self.model_height - 1)
        y0 = np.floor(fy).astype(np.int64)
        y1 = np.minimum(y0 + 1, self.model_height - 1)
        return y0, y1, (fy - y0).astype(np.float32)

    def _ready_until(self) -> int:
        """One past the last input row whose lower source row has arrived."""
        if self.received >= self.model_height:
            return self.in_height
        candidates = np.arange(self.next_row, self.in_height)
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
        if self.next_row < self.in_height:
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


# ---------------------------------------------------------------------------------------------
# The engine


def predict_raster(
    raster_path: Union[str, Path],
    card: ModelCard,
    out_path: Union[str, Path],
    options: Optional[InferenceOptions] = None,
    progress: Optional[ProgressCallback] = None,
    is_canceled: Optional[CancelCallback] = None,
    model: Optional[nn.Module] = None,
    *,
    scaling_stats: Optional[ScalingStats] = None,
    prepared_model: Optional[nn.Module] = None,
) -> InferenceResult:
    """Write the model's per-head probabilities for `raster_path` to `out_path` (a GeoTIFF on the input grid).

    `model` is an already-built network for the card (e.g. during training); otherwise the card's
    weights are loaded and verified. Nothing is left at `out_path` on error or cancel.

    `scaling_stats`: fixed input-scaling statistics (``compute_scaling_stats`` of a larger raster this one
    is part of, so the parts are scaled alike); None computes them from this raster.
    `prepared_model`: a network already passed through ``prepare_model`` for the card and for the device
    `options.device` resolves to, so repeated calls skip the copy and fusing; it is used as given (and
    `model` is ignored). An out-of-memory fall-back moves it to the CPU in place.
    """
    from ..io.paths import check_outputs

    options = options or InferenceOptions()
    started = time.perf_counter()
    out_path = Path(out_path)
    check_outputs({"raster": raster_path}, {"The probability output": out_path})
    if options.output_dtype not in ("uint8", "float32"):
        raise OutputError(f"output_dtype must be 'uint8' or 'float32', not {options.output_dtype!r}.")
    check_batch_size(options.batch_size)
    raster_io.check_output_writable(out_path)
    card.validate()
    previous_threads = torch.get_num_threads()
    if options.num_threads:
        torch.set_num_threads(max(1, int(options.num_threads)))
    try:
        with raster_io.gdal_env(), raster_io.opened(raster_path) as dataset:
            return _predict_dataset(
                dataset, card, out_path, options, progress, is_canceled, model, started, scaling_stats, prepared_model
            )
    finally:
        torch.set_num_threads(previous_threads)


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

    @property
    def kx(self) -> float:
        return self.width / self.model_width

    @property
    def ky(self) -> float:
        return self.height / self.model_height


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
    if plan.width <= max_width and plan.model_width <= max_width:
        bounds = [(0, plan.width)]
    else:
        bounds = TileGrid(plan.width, 1, 1, 1, 0).column_windows(input_width, raster_io.OUTPUT_BLOCK)
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


class BatchRunner:
    """Turns scaled tiles into probabilities: the one-time precision check, batching, OOM retries."""

    def __init__(
        self, runner: TileRunner, batch_size: int, check_bf16: bool, threshold: float, notes: list[str]
    ) -> None:
        self.runner = runner
        self.batch_size = batch_size
        self.check_bf16 = check_bf16
        self.threshold = threshold
        self.notes = notes

    def run(self, tiles: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(tiles)
        parts = []
        if self.check_bf16:
            # Two tiles are enough to compare precisions and cannot run out of GPU memory.
            parts.append(_check_bf16(self.runner, batch[:2], self.threshold, self.notes))
            self.check_bf16 = False
            batch = batch[2:]
        if len(batch):
            rest, self.batch_size = _run_with_retry(self.runner, batch, self.batch_size)
            parts.append(rest)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


class TileJob:
    """State shared by every window of one prediction: dataset, grids, network, writer, counters."""

    def __init__(self, dataset, card, plan, grid, band_indexes, stats, batches, writer, report, is_canceled) -> None:
        self.dataset, self.card, self.plan, self.grid = dataset, card, plan, grid
        self.band_indexes, self.stats, self.batches, self.writer = band_indexes, stats, batches, writer
        self.report, self.is_canceled = report, is_canceled
        self.heads = len(card.heads)
        self.done_tiles = self.skipped_tiles = 0

    def progress(self) -> None:
        first, last = PROGRESS_TILES
        self.report(first + (last - first) * self.done_tiles / max(1, self.grid.n_tiles * self.tile_passes))

    tile_passes = 1  # > 1 when seam tiles run for two windows

    def read_strip(self, window: ColumnWindow, y0: int, strip_h: int) -> tuple[np.ndarray, np.ndarray]:
        """The model-grid strip (C, strip_h, tiles width) under a tile row of a window, with validity."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        plan = self.plan
        cols = window.tiles_stop - window.tiles_first
        if not plan.resampled:
            return raster_io.read_block(
                self.dataset, self.band_indexes, window=Window(window.tiles_first, y0, cols, strip_h)
            )
        source = Window(window.tiles_first * plan.kx, y0 * plan.ky, cols * plan.kx, strip_h * plan.ky)
        return raster_io.read_block(
            self.dataset,
            self.band_indexes,
            window=source,
            out_shape=(strip_h, cols),
            resampling=Resampling.average if plan.ky > 1 else Resampling.bilinear,
        )

    def accumulate_row(self, window: ColumnWindow, strip, valid, strip_h: int, accumulator: np.ndarray) -> None:
        """Run every tile of one tile row of the window and add its weighted probabilities."""
        grid = self.grid
        pending: list[tuple[int, np.ndarray]] = []
        for index, x0 in enumerate(window.xs):
            local = x0 - window.tiles_first
            w = min(grid.tile_w, self.plan.model_width - x0)
            tile_valid = valid[:, local : local + w]
            self.done_tiles += 1
            if tile_valid.any():
                scaled = apply_scaling(strip[:, :, local : local + w], tile_valid, self.stats, self.card)
                pending.append((local, pad_tile(scaled, grid.tile_h, grid.tile_w)))
            else:
                self.skipped_tiles += 1
            if pending and (len(pending) >= self.batches.batch_size or index == len(window.xs) - 1):
                probabilities = self.batches.run([t for _x, t in pending])
                for (lx, _t), p in zip(pending, probabilities):
                    w = min(grid.tile_w, accumulator.shape[2] - lx)
                    accumulator[:, :strip_h, lx : lx + w] += p[:, :strip_h, :w] * grid.weights[:strip_h, :w]
                pending.clear()
                check_canceled(self.is_canceled)
                self.progress()
        self.progress()

    def run_window(self, window: ColumnWindow) -> None:
        """Tile rows top to bottom over one column window; finished rows stream to the writer."""
        grid, plan = self.grid, self.plan
        accumulator = np.zeros((self.heads, grid.tile_h, window.tiles_stop - window.tiles_first), np.float32)
        emit = self.emitter(window)
        lo, hi = window.model_first - window.tiles_first, window.model_stop - window.tiles_first
        norm_x = grid.norm_x[window.model_first : window.model_stop]
        for row_index, y0 in enumerate(grid.ys):
            check_canceled(self.is_canceled)
            strip_h = min(grid.tile_h, plan.model_height - y0)
            strip, valid = self.read_strip(window, y0, strip_h)
            self.accumulate_row(window, strip, valid, strip_h, accumulator)
            last_row = row_index == len(grid.ys) - 1
            finished = strip_h if last_row else grid.ys[row_index + 1] - y0
            norm = grid.norm_y[y0 : y0 + finished, None] * norm_x[None, :]
            emit(accumulator[:, :finished, lo:hi] / norm, valid[:finished, lo:hi])
            if not last_row:
                accumulator[:, : grid.tile_h - finished] = accumulator[:, finished:]
                accumulator[:, grid.tile_h - finished :] = 0.0

    def emitter(self, window: ColumnWindow) -> Callable[[np.ndarray, np.ndarray], None]:
        """Where a window's finished model rows go: the writer, through the resampler when resampled."""
        columns = (window.first, window.stop)
        if not self.plan.resampled:
            return lambda prob, valid: self.writer.write_rows(prob, valid, columns)
        plan = self.plan
        resampler = GridResampler(plan.width, plan.height, plan.model_width, plan.model_height, self.heads, columns)

        def emit(prob: np.ndarray, valid: np.ndarray) -> None:
            first, rows = resampler.push(np.where(valid[None], prob, np.float32(0.0)))
            if rows.shape[1]:
                in_valid = read_valid_rows(self.dataset, self.band_indexes, first, rows.shape[1], columns)
                self.writer.write_rows(rows, in_valid, columns)

        return emit


def _prepare_runner(
    card, options, model, notes: list[str], tile_h: int, tile_w: int, prepared_model: Optional[nn.Module] = None
) -> BatchRunner:
    """Device, precision, the prepared network and the batch size."""
    choice = select_device(options.device)
    if choice.note:
        notes.append(choice.note)
    precision, check_bf16, precision_notes = _resolve_precision(options.precision, choice)
    notes += precision_notes
    if prepared_model is not None:
        net = prepared_model
        parameter = next(net.parameters(), None)
        # A network left on another device would fail on the first batch with a torch message.
        if parameter is not None and parameter.device.type != choice.kind:
            raise InputError(
                f"The prepared network is on {parameter.device}, but inference runs on {choice.device}. "
                "Prepare it with prepare_model for that device. This is a bug in the caller; please report it."
            )
    else:
        if model is None:
            from ..zoo.weights import load_model

            model = load_model(card, "cpu")
        net = prepare_model(model, choice)
    tta_policy = card.tta if options.tta else "none"
    runner = TileRunner(net, choice, precision, tta_policy, options.look_direction_flip, tile_h == tile_w)
    batch_size = int(options.batch_size or _default_batch_size(choice, tile_h, tile_w))
    return BatchRunner(runner, batch_size, check_bf16, card.threshold, notes)


# Progress before the first tile: the statistics pass and the model load can take seconds (a large
# raster without overviews, a model read from disk and prepared), so the bar moves during them too.
PROGRESS_STATS = (0.0, 0.05)
PROGRESS_MODEL = (0.05, 0.08)
PROGRESS_TILES = (PROGRESS_MODEL[1], 0.95)


def _predict_dataset(
    dataset,
    card,
    out_path,
    options,
    progress,
    is_canceled,
    model,
    started,
    scaling_stats: Optional[ScalingStats] = None,
    prepared_model: Optional[nn.Module] = None,
) -> InferenceResult:
    notes: list[str] = []
    report = progress or (lambda _f: None)
    report(PROGRESS_STATS[0])
    band_indexes, channels = resolve_bands(dataset.count, card, raster_io.alpha_band(dataset))
    if channels > len(band_indexes):
        notes.append(f"Single-band raster: the band is repeated to feed the model's {channels} bands.")
    plan = plan_grid(dataset, card, options)
    notes += plan.notes
    report(0.01)
    if scaling_stats is None:
        stats = compute_scaling_stats(dataset, card, band_indexes, channels)
    else:
        stats = _given_stats(scaling_stats, band_indexes, channels)
    report(PROGRESS_STATS[1])
    check_canceled(is_canceled)
    tile, overlap = check_tile_settings(card, options)
    grid = TileGrid.for_raster(plan.model_width, plan.model_height, tile, overlap)
    report(PROGRESS_MODEL[0] + 0.01)
    batches = _prepare_runner(card, options, model, notes, grid.tile_h, grid.tile_w, prepared_model)
    report(PROGRESS_MODEL[1])
    check_canceled(is_canceled)
    batches.runner.is_canceled = is_canceled
    writer = raster_io.ProbabilityWriter(
        out_path,
        plan.width,
        plan.height,
        list(card.heads),
        dataset.crs,
        dataset.transform,
        options.output_dtype,
        tags={
            "FOOTPRINT_MODEL": card.display_name,
            "FOOTPRINT_THRESHOLD": f"{resolve_threshold(options.threshold, card.threshold):g}",
        },
    )
    job = TileJob(dataset, card, plan, grid, band_indexes, stats, batches, writer, report, is_canceled)
    windows = column_windows(plan, grid)
    job.tile_passes = sum(len(w.xs) for w in windows) / max(1, len(grid.xs))
    try:
        for window in windows:
            job.run_window(window)
        check_canceled(is_canceled)
        writer.commit(progress=sub_progress(progress, 0.95, 1.0))
    except BaseException:
        writer.abort()
        raise
    report(1.0)
    return _result(job, out_path, notes, started)


def _given_stats(stats: ScalingStats, band_indexes: list[int], channels: int) -> ScalingStats:
    """A copy of caller-given statistics (the caller may reuse or change its own), checked against the bands."""
    # Statistics of another band layout would fail deep in apply_scaling, on the first tile.
    if len(stats.band_indexes) != len(band_indexes) or stats.replicate_to != channels:
        raise InputError(
            f"The given scaling statistics are for {len(stats.band_indexes)} bands fed as {stats.replicate_to} "
            f"channels, but this raster gives {len(band_indexes)} bands fed as {channels}. This is a bug in the "
            "caller; please report it."
        )
    return dataclasses.replace(stats, band_indexes=list(stats.band_indexes), low=list(stats.low), high=list(stats.high))


def _result(job: TileJob, out_path: Path, notes: list[str], started: float) -> InferenceResult:
    runner = job.batches.runner
    if job.batches.check_bf16:  # no tile ever ran, so the reduced precision was never checked nor used
        runner.precision = "fp32"
    if job.skipped_tiles == job.done_tiles:
        notes.append("The raster has no valid pixels (all nodata or masked): the probability raster is empty.")
    notes += runner.notes
    plan, dataset = job.plan, job.dataset
    final = runner.choice
    return InferenceResult(
        probability_path=out_path,
        heads=list(job.card.heads),
        device=final.device,
        device_name=final.name,
        device_note=final.note,
        precision=runner.precision,
        width=plan.width,
        height=plan.height,
        megapixels=plan.width * plan.height / 1e6,
        seconds=time.perf_counter() - started,
        resampled=plan.resampled,
        warnings=notes,
        crs_wkt=dataset.crs.to_wkt() if dataset.crs else None,
        gsd_m=float(plan.gsd) if plan.gsd is not None else 1.0,
        tiles=job.grid.n_tiles,
        tiles_skipped=job.skipped_tiles,
        batch_size=job.batches.batch_size,
        stats=job.stats.to_dict(),
    )


def _run_with_retry(runner: TileRunner, batch: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """Run in sub-batches; on GPU out-of-memory halve the batch, and at 1 continue on the CPU."""
    outputs = []
    start = 0
    while start < len(batch):
        part = batch[start : start + batch_size]
        try:
            outputs.append(runner.run(part))
            start += len(part)
        except RuntimeError as exc:
            if not is_out_of_memory(exc) or runner.device.type == "cpu":
                raise
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
            if batch_size > 1:
                batch_size = max(1, batch_size // 2)
                runner.notes.append(f"GPU out of memory: batch size reduced to {batch_size}.")
            else:
                runner.move_to_cpu("out of memory even with one tile per batch")
    return np.concatenate(outputs), batch_size


def bf16_agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> tuple[float, float]:
    """(mask IoU with the union floored at 1 % of pixels, max absolute probability difference)."""
    ref_mask, cand_mask = reference >= threshold, candidate >= threshold
    union = max(float(np.count_nonzero(ref_mask | cand_mask)), 0.01 * ref_mask.size)
    iou = 1.0 - float(np.count_nonzero(ref_mask != cand_mask)) / union
    return iou, float(np.abs(reference - candidate).max())


def _check_bf16(runner: TileRunner, batch: np.ndarray, threshold: float, notes: list[str]) -> np.ndarray:
    """Run one batch in fp32 and in the runner's reduced precision (bf16 on CPU, fp16 on CUDA);
    keep the reduced precision only if the thresholded masks match."""
    reduced = runner.precision
    reference = runner.run(batch, "fp32")
    candidate = runner.run(batch, reduced)
    iou, max_diff = bf16_agreement(reference, candidate, threshold)
    if iou >= BF16_MIN_MASK_IOU and max_diff <= BF16_MAX_PROBABILITY_DIFF:
        return reference
    runner.precision = "fp32"
    # The figures are for developers (log); the user reads only what happened and why.
    _LOG.debug(
        "%s did not match fp32 closely enough (mask IoU %.3f, largest probability difference %.2f); using fp32.",
        reduced,
        iou,
        max_diff,
    )
    notes.append(BF16_FALLBACK_WARNING)
    return reference


# ---------------------------------------------------------------------------------------------
# Job size: said before the work starts

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
    return len(_tta_transforms(card.tta if options.tta else "none", square))


def estimate_job(
    raster_path: Union[str, Path], card: ModelCard, options: InferenceOptions, out_path: Union[str, Path]
) -> JobEstimate:
    """Megapixels, expected time at the measured speed and disk for the probability raster."""
    from ..io.paths import free_bytes

    options = options or InferenceOptions()
    tile, overlap = check_tile_settings(card, options)
    with raster_io.gdal_env(), raster_io.opened(raster_path) as dataset:
        plan = plan_grid(dataset, card, options)
    grid = TileGrid.for_raster(plan.model_width, plan.model_height, tile, overlap)
    passes = tta_passes(card, options, grid.tile_h == grid.tile_w)
    kind = "cuda" if options.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    if options.device == "auto" and torch.cuda.is_available():
        kind = "cuda"
    speed = measured_speed(card, kind, tile)
    mp_per_s = speed or DEFAULT_MP_PER_S.get(kind, 0.5)
    # Work is tiles x tile area (overlaps run twice), not raster area.
    work_mp = grid.n_tiles * grid.tile_h * grid.tile_w / 1e6 * passes
    bytes_per_pixel = (1 if options.output_dtype == "uint8" else 4) * len(card.heads)
    raw = plan.width * plan.height * bytes_per_pixel
    return JobEstimate(
        megapixels=plan.width * plan.height / 1e6,
        model_megapixels=plan.model_width * plan.model_height / 1e6,
        tiles=grid.n_tiles,
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
