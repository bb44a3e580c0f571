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

import dataclasses
import time
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled, sub_progress
from ..common.errors import InputError, OutputError
from ..common.vocabulary import DEFAULT_MIN_AREA_M2, resolve_threshold
from ..io import raster_io
from ..zoo.modelcard import ModelCard
from .device import select_device

# Re-exported: CLI, Processing, batch and scripts import the engine's entry points from this module.
from .estimate import check_disk, estimate_job, remember_speed, tta_passes  # noqa: F401
from .options import InferenceOptions, InferenceResult, check_batch_size, check_tile_settings
from .planning import GridPlan, GridResampler, check_window, column_windows, plan_grid  # noqa: F401
from .precision import (  # noqa: F401
    BF16_FALLBACK_WARNING,
    BF16_MIN_MASK_IOU,
    GATE_TILES,
    bf16_agreement,
    gate_reduced_precision,
)
from .runner import BatchRunner, TileRunner, default_batch_size, prepare_model, resolve_precision
from .scaling import ScalingStats, cached_scaling_stats, resolve_bands
from .streaming import PROGRESS_MODEL, PROGRESS_STATS, TileJob
from .tiling import TileGrid


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
    `options.window`: (column, row, width, height) in raster pixels: only that part is predicted and written,
    with the whole raster's statistics and tile grid, so it gets the whole raster's probabilities there.
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
                dataset,
                card,
                out_path,
                options,
                progress,
                is_canceled,
                model,
                started,
                scaling_stats,
                prepared_model,
            )
    finally:
        torch.set_num_threads(previous_threads)


def _prepare_runner(
    card, options, model, notes: list[str], tile_h: int, tile_w: int, prepared_model: Optional[nn.Module] = None
) -> BatchRunner:
    """Device, precision, the prepared network and the batch size."""
    choice = select_device(options.device)
    if choice.note:
        notes.append(choice.note)
    precision, check_bf16, precision_notes = resolve_precision(options.precision, choice)
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
    batch_size = int(options.batch_size or default_batch_size(choice, tile_h, tile_w))
    return BatchRunner(runner, batch_size, check_bf16, card.threshold, notes)


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
    timings: dict[str, float] = {}
    report = progress or (lambda _f: None)
    report(PROGRESS_STATS[0])
    band_indexes, channels = resolve_bands(dataset.count, card, raster_io.alpha_band(dataset))
    if channels > len(band_indexes):
        notes.append(f"Single-band raster: the band is repeated to feed the model's {channels} bands.")
    plan = plan_grid(dataset, card, options)
    plan.window = check_window(options.window, dataset.width, dataset.height)
    notes += plan.notes
    report(0.01)
    stage = time.perf_counter()
    if scaling_stats is None:
        # The whole raster's statistics, whatever the window: any part of a layer is scaled alike.
        stats = cached_scaling_stats(dataset, card, band_indexes, channels)
    else:
        stats = _given_stats(scaling_stats, band_indexes, channels)
    timings["statistics"] = time.perf_counter() - stage
    report(PROGRESS_STATS[1])
    check_canceled(is_canceled)
    tile, overlap = check_tile_settings(card, options)
    grid = TileGrid.for_raster(plan.model_width, plan.model_height, tile, overlap)
    report(PROGRESS_MODEL[0] + 0.01)
    stage = time.perf_counter()
    batches = _prepare_runner(card, options, model, notes, grid.tile_h, grid.tile_w, prepared_model)
    timings["model"] = time.perf_counter() - stage
    report(PROGRESS_MODEL[1])
    check_canceled(is_canceled)
    batches.runner.is_canceled = is_canceled
    writer = _writer(dataset, card, plan, out_path, options)
    job = TileJob(dataset, card, plan, grid, band_indexes, stats, batches, writer, report, is_canceled)
    try:
        _run_job(job, notes, timings, progress, is_canceled)
    except BaseException:
        writer.abort()
        raise
    report(1.0)
    return _result(job, out_path, notes, started, timings)


def _writer(dataset, card: ModelCard, plan, out_path: Path, options: InferenceOptions) -> raster_io.ProbabilityWriter:
    """The probability GeoTIFF of the window (or the raster) on the input grid."""
    from rasterio.windows import Window

    col, row, width, height = plan.out_window
    return raster_io.ProbabilityWriter(
        out_path,
        width,
        height,
        list(card.heads),
        dataset.crs,
        dataset.window_transform(Window(col, row, width, height)) if plan.window else dataset.transform,
        options.output_dtype,
        tags={
            "FOOTPRINT_MODEL": card.display_name,
            "FOOTPRINT_THRESHOLD": f"{resolve_threshold(options.threshold, card.threshold):g}",
        },
    )


def _run_job(job: TileJob, notes: list[str], timings: dict[str, float], progress, is_canceled) -> None:
    """The precision gate, every column window, then the COG."""
    windows = column_windows(job.plan, job.grid)
    job.tile_passes = sum(len(w.xs) for w in windows) / max(1, len(job.grid.xs))
    if job.batches.check_precision:
        stage = time.perf_counter()
        _gate_precision(job, notes, sorted({x for window in windows for x in window.xs}))
        timings["precision check"] = time.perf_counter() - stage
    for window in windows:
        job.run_window(window)
    check_canceled(is_canceled)
    stage = time.perf_counter()
    job.writer.commit(progress=sub_progress(progress, 0.95, 1.0))
    timings["cog"] = time.perf_counter() - stage


def _gate_precision(job: TileJob, notes: list[str], xs: list[int]) -> None:
    """Choose the reduced precision or fp32 on tiles sampled over the area (precision.py)."""
    runner = job.batches.runner
    keys, tiles = job.sample_tiles(GATE_TILES, xs)
    job.batches.check_precision = False
    if not tiles:  # nothing valid found to compare on: the reduced precision is not used unchecked
        runner.precision = "fp32"
        return
    gsd = job.card.gsd_m if job.plan.resampled or job.plan.gsd is None else job.plan.gsd
    min_pixels = max(1, int(0.5 * DEFAULT_MIN_AREA_M2 / gsd**2))
    threshold = job.batches.threshold
    # Compared where a tile's blend weight is at least half (beyond half the overlap from its edges).
    margin = job.grid.overlap // 2
    heads = job.card.heads
    outputs, agreement = gate_reduced_precision(runner, tiles, heads, threshold, gsd, min_pixels, notes, margin)
    job.known = dict(zip(keys, outputs))
    if agreement is not None:
        job.precision_check = {**dataclasses.asdict(agreement), "tiles": len(tiles), "passed": agreement.passes}


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


def _result(job: TileJob, out_path: Path, notes: list[str], started: float, timings: dict) -> InferenceResult:
    runner = job.batches.runner
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
        width=plan.out_window[2],
        height=plan.out_window[3],
        megapixels=plan.out_window[2] * plan.out_window[3] / 1e6,
        seconds=time.perf_counter() - started,
        resampled=plan.resampled,
        warnings=notes,
        crs_wkt=dataset.crs.to_wkt() if dataset.crs else None,
        gsd_m=float(plan.gsd) if plan.gsd is not None else 1.0,
        tiles=job.grid.n_tiles,
        tiles_skipped=job.skipped_tiles,
        batch_size=job.batches.batch_size,
        stats=job.stats.to_dict(),
        timings={**timings, **job.timings},
        precision_check=dict(job.precision_check),
    )
