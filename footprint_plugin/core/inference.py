"""Tiled, blended, streamed inference: a raster of any size in, a probability GeoTIFF out.

How it works:
- The raster is processed in rows of overlapping square tiles. Each tile row is read as one
  full-width strip (a single windowed read, so each source block is decoded about once).
- Every tile is scaled with statistics computed once for the raster (no per-tile seams), run
  through the network (optionally with TTA and a 180-degree look-direction flip), and added to a
  strip accumulator with a separable weight window that fades out over the overlap, so tile
  borders (where the network lacks context) contribute almost nothing.
- Rows that no later tile touches are normalised and streamed to the output; memory is bounded
  by tile size x raster width, never by raster height.
- When the raster's GSD is far from the model's, tiles are read resampled to the model GSD (a
  "model grid") and the probabilities are interpolated back onto the input grid while streaming.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from . import raster_io
from .callbacks import CancelCallback, ProgressCallback, check_canceled
from .device import DeviceChoice, cpu_supports_bf16, is_out_of_memory, select_device
from .errors import InputError, OutputError
from .modelcard import ModelCard
from .models import fuse_conv_activation, fuse_conv_bn, reduced_precision_copy
from .scaling import ScalingStats, apply_scaling, compute_scaling_stats, resolve_bands

# Resample when the raster's GSD differs from the model's by more than this factor.
GSD_TOLERANCE = 1.25
# Upsampling beyond this adds no detail and multiplies the work by its square: refuse instead.
MAX_UPSAMPLING = 8.0
# Weight of tile-border pixels: tiny but non-zero, so raster-border pixels (covered by one tile) stay defined.
WEIGHT_FLOOR = 1e-3
# bf16 is accepted on CPU only when its masks match fp32's: mask IoU at least 0.98 (the union is
# floored at 1 % of the pixels so a nearly empty batch cannot pass by luck or fail by noise), and no
# probability moves by more than 0.1. A partly trained efficient U-Net measured IoU 0.96-0.97 and
# max 0.19 on real imagery (its masks move as much with input noise of a third of a grey level),
# so it runs in fp32; a model whose masks are stable gets bf16's ~2x speed.
BF16_MIN_MASK_IOU = 0.98
BF16_MAX_PROBABILITY_DIFF = 0.1
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
# Tiling and blending


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


def _pad_tile(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    pad_h, pad_w = height - tile.shape[-2], width - tile.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return tile
    mode = "reflect" if min(tile.shape[-2:]) > 1 else "edge"
    return np.pad(tile, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)


def _round_up(value: int, multiple: int = 32) -> int:
    return int(math.ceil(value / multiple) * multiple)


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

    Pixel centres are matched (GDAL's half-pixel convention), edges are clamped.
    """

    def __init__(self, in_width: int, in_height: int, model_width: int, model_height: int, heads: int) -> None:
        self.in_height, self.model_height = in_height, model_height
        self.scale_y = model_height / in_height
        fx = (np.arange(in_width) + 0.5) * (model_width / in_width) - 0.5
        fx = np.clip(fx, 0, model_width - 1)
        self.x0 = np.floor(fx).astype(np.int64)
        self.x1 = np.minimum(self.x0 + 1, model_width - 1)
        self.wx = (fx - self.x0).astype(np.float32)
        self.buffer = np.zeros((heads, 0, model_width), np.float32)
        self.buffer_start = 0  # model row of buffer[:, 0]
        self.received = 0
        self.next_row = 0  # next input row to produce

    def _source_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fy = np.clip((rows + 0.5) * self.scale_y - 0.5, 0, self.model_height - 1)
        y0 = np.floor(fy).astype(np.int64)
        y1 = np.minimum(y0 + 1, self.model_height - 1)
        return y0, y1, (fy - y0).astype(np.float32)

    def push(self, rows: np.ndarray) -> tuple[int, np.ndarray]:
        """Add model rows; return (first input row, interpolated rows (heads, n, in_width))."""
        self.buffer = np.concatenate([self.buffer, rows], axis=1)
        self.received += rows.shape[1]
        last = self.in_height
        if self.received < self.model_height:
            # Input rows whose lower source row has arrived.
            candidates = np.arange(self.next_row, self.in_height)
            _y0, y1, _w = self._source_rows(candidates)
            ready = np.nonzero(y1 >= self.received)[0]
            last = self.next_row + (int(ready[0]) if ready.size else candidates.size)
        first = self.next_row
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


def read_valid_rows(dataset, band_indexes: list[int], row: int, count: int) -> np.ndarray:
    """Validity of input rows [row, row + count) at full resolution (no data read when none can be invalid)."""
    from rasterio.enums import MaskFlags
    from rasterio.windows import Window

    flags = [dataset.mask_flag_enums[b - 1] for b in band_indexes]
    float_data = any(np.dtype(dataset.dtypes[b - 1]).kind in "fc" for b in band_indexes)
    if all(f == [MaskFlags.all_valid] for f in flags) and not float_data:
        return np.ones((count, dataset.width), bool)
    _data, valid = raster_io.read_block(dataset, band_indexes, window=Window(0, row, dataset.width, count))
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
) -> InferenceResult:
    """Write the model's per-head probabilities for `raster_path` to `out_path` (a GeoTIFF on the input grid).

    `model` is an already-built network for the card (e.g. during training); otherwise the card's
    weights are loaded and verified. Nothing is left at `out_path` on error or cancel.
    """
    options = options or InferenceOptions()
    started = time.perf_counter()
    out_path = Path(out_path)
    if out_path.resolve() == Path(raster_path).resolve():
        raise OutputError("The output path is the input raster; choose another file name.")
    if options.output_dtype not in ("uint8", "float32"):
        raise OutputError(f"output_dtype must be 'uint8' or 'float32', not {options.output_dtype!r}.")
    raster_io.check_output_writable(out_path)
    card.validate()
    previous_threads = torch.get_num_threads()
    if options.num_threads:
        torch.set_num_threads(max(1, int(options.num_threads)))
    try:
        with raster_io.gdal_env(), raster_io.opened(raster_path) as dataset:
            return _predict_dataset(dataset, card, out_path, options, progress, is_canceled, model, started)
    finally:
        torch.set_num_threads(previous_threads)


def _predict_dataset(dataset, card, out_path, options, progress, is_canceled, model, started) -> InferenceResult:
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    notes: list[str] = []
    width, height = dataset.width, dataset.height
    band_indexes, channels = resolve_bands(dataset.count, card, raster_io.alpha_band(dataset))
    if channels > len(band_indexes):
        notes.append(f"Single-band raster: the band is repeated to feed the model's {channels} bands.")

    gsd = raster_io.raster_gsd_m(dataset)
    if gsd is None:
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
    if resampled:
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
    else:
        model_width, model_height = width, height
        if gsd is not None and abs(ratio - 1.0) > 0.05:
            notes.append(f"The raster's GSD ({gsd:.3g} m) differs from the model's ({card.gsd_m:g} m); not resampled.")
    ky = height / model_height

    stats: ScalingStats = compute_scaling_stats(dataset, card, band_indexes, channels)
    check_canceled(is_canceled)

    choice = select_device(options.device)
    if choice.note:
        notes.append(choice.note)
    precision, check_bf16, precision_notes = _resolve_precision(options.precision, choice)
    notes += precision_notes
    if model is None:
        from .zoo import load_model

        model = load_model(card, "cpu")
    net = prepare_model(model, choice)

    tile = int(options.tile_size or card.tile_size)
    overlap = int(card.overlap if options.overlap is None else options.overlap)
    if tile < 32 or tile % 32:
        raise InputError(f"Tile size must be a multiple of 32 and at least 32, not {tile}.")
    if not 0 <= overlap < tile // 2:
        raise InputError(f"Overlap must be between 0 and half the tile size ({tile // 2}), not {overlap}.")
    tile_h = tile if model_height >= tile else _round_up(model_height)
    tile_w = tile if model_width >= tile else _round_up(model_width)
    xs, ys = tile_starts(model_width, tile_w, overlap), tile_starts(model_height, tile_h, overlap)
    ramp_x, ramp_y = blend_ramp(tile_w, overlap), blend_ramp(tile_h, overlap)
    norm_x, norm_y = weight_sums(model_width, xs, ramp_x), weight_sums(model_height, ys, ramp_y)
    tile_weights = np.outer(ramp_y, ramp_x)  # sliced per tile instead of rebuilt per tile
    tta_policy = card.tta if options.tta else "none"
    runner = TileRunner(net, choice, precision, tta_policy, options.look_direction_flip, tile_h == tile_w)
    runner.is_canceled = is_canceled
    batch_size = int(options.batch_size or _default_batch_size(choice, tile_h, tile_w))

    heads = list(card.heads)
    writer = raster_io.ProbabilityWriter(
        out_path,
        width,
        height,
        heads,
        dataset.crs,
        dataset.transform,
        options.output_dtype,
        tags={"FOOTPRINT_MODEL": card.display_name, "FOOTPRINT_THRESHOLD": f"{card.threshold:g}"},
    )
    resampler = GridResampler(width, height, model_width, model_height, len(heads)) if resampled else None

    def emit(prob: np.ndarray, valid: np.ndarray) -> None:
        if resampler is None:
            writer.write_rows(prob, valid)
            return
        prob = np.where(valid[None], prob, np.float32(0.0))
        first, rows = resampler.push(prob)
        if rows.shape[1]:
            writer.write_rows(rows, read_valid_rows(dataset, band_indexes, first, rows.shape[1]))

    total_tiles = len(xs) * len(ys)
    done_tiles = skipped_tiles = 0
    accumulator = np.zeros((len(heads), tile_h, model_width), np.float32)
    report = progress or (lambda _f: None)
    report(0.02)
    try:
        for row_index, y0 in enumerate(ys):
            check_canceled(is_canceled)
            strip_h = min(tile_h, model_height - y0)
            if resampled:
                window = Window(0, y0 * ky, width, strip_h * ky)
                strip, strip_valid = raster_io.read_block(
                    dataset,
                    band_indexes,
                    window=window,
                    out_shape=(strip_h, model_width),
                    resampling=Resampling.average if ky > 1 else Resampling.bilinear,
                )
            else:
                strip, strip_valid = raster_io.read_block(dataset, band_indexes, window=Window(0, y0, width, strip_h))
            pending: list[tuple[int, np.ndarray]] = []

            def flush(pending: list[tuple[int, np.ndarray]], strip_h: int) -> None:
                nonlocal check_bf16, batch_size
                if not pending:
                    return
                batch = np.stack([t for _x, t in pending])
                parts = []
                if check_bf16:
                    # Two tiles are enough to compare precisions and cannot run out of GPU memory.
                    parts.append(_check_bf16(runner, batch[:2], card.threshold, notes))
                    check_bf16 = False
                    batch = batch[2:]
                if len(batch):
                    rest, batch_size = _run_with_retry(runner, batch, batch_size)
                    parts.append(rest)
                prob = np.concatenate(parts) if len(parts) > 1 else parts[0]
                for (x0, _t), p in zip(pending, prob):
                    w = min(tile_w, model_width - x0)
                    accumulator[:, :strip_h, x0 : x0 + w] += p[:, :strip_h, :w] * tile_weights[:strip_h, :w]
                pending.clear()

            for x0 in xs:
                w = min(tile_w, model_width - x0)
                tile_valid = strip_valid[:, x0 : x0 + w]
                done_tiles += 1
                if not tile_valid.any():
                    skipped_tiles += 1
                    continue
                scaled = apply_scaling(strip[:, :, x0 : x0 + w], tile_valid, stats, card)
                pending.append((x0, _pad_tile(scaled, tile_h, tile_w)))
                if len(pending) >= batch_size:
                    flush(pending, strip_h)
                    check_canceled(is_canceled)
                    report(0.02 + 0.93 * done_tiles / total_tiles)
            flush(pending, strip_h)
            report(0.02 + 0.93 * done_tiles / total_tiles)

            last_row = row_index == len(ys) - 1
            finished = strip_h if last_row else ys[row_index + 1] - y0
            norm = norm_y[y0 : y0 + finished, None] * norm_x[None, :]
            prob = accumulator[:, :finished] / norm
            emit(prob, strip_valid[:finished])
            if not last_row:
                accumulator[:, : tile_h - finished] = accumulator[:, finished:]
                accumulator[:, tile_h - finished :] = 0.0
        check_canceled(is_canceled)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    report(1.0)

    if check_bf16:  # no tile ever ran, so the reduced precision was never checked nor used
        runner.precision = "fp32"
    if skipped_tiles == total_tiles:
        notes.append("The raster has no valid pixels (all nodata or masked): the probability raster is empty.")
    notes += runner.notes
    final = runner.choice
    seconds = time.perf_counter() - started
    return InferenceResult(
        probability_path=out_path,
        heads=heads,
        device=final.device,
        device_name=final.name,
        device_note=final.note or choice.note,
        precision=runner.precision,
        width=width,
        height=height,
        megapixels=width * height / 1e6,
        seconds=seconds,
        resampled=resampled,
        warnings=notes,
        crs_wkt=dataset.crs.to_wkt() if dataset.crs else None,
        gsd_m=float(gsd) if gsd is not None else 1.0,
        tiles=total_tiles,
        tiles_skipped=skipped_tiles,
        batch_size=batch_size,
        stats=stats.to_dict(),
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
    notes.append(
        f"{reduced} did not match fp32 closely enough for this model (mask IoU {iou:.3f}, largest probability "
        f"difference {max_diff:.2f}); using fp32."
    )
    return reference
