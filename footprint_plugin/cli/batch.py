"""`batch INPUTS... --out buildings.gpkg`: detection over many tiles as seamless mosaics, on Dask workers."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..core.common.vocabulary import DEFAULT_MIN_AREA_M2
from . import add_common_arguments, add_overwrite_argument
from .common import Reporter


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "batch",
        help="detect buildings over many tiles (a city, a country), in parallel and resumable",
        description=(
            "Detect buildings in folders of tiles, lists of rasters or VRTs. Touching tiles of one CRS are one "
            "mosaic, so buildings across tile edges come out whole. Blocks run on Dask workers (a local cluster "
            "by default, or --scheduler) or serially without dask; --resume continues a killed job."
        ),
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="rasters, VRTs and/or folders of tiles")
    parser.add_argument("--out", type=Path, required=True, help="merged building polygons (.gpkg, .fgb, .geojson)")
    parser.add_argument("--pattern", default="*.tif", help="files taken from input folders (default *.tif)")
    parser.add_argument("--probability-dir", type=Path, help="also write one probability COG per mosaic here")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        help="local Dask worker processes (default: one per core or GPU; " "0: serially in this process)",
    )
    where.add_argument("--scheduler", help="an existing Dask scheduler, e.g. tcp://host:8786 (README: Big areas)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the job in the job folder: skip finished blocks"
    )
    parser.add_argument("--job-dir", type=Path, help="job folder (default: OUT.job beside the output)")
    parser.add_argument("--keep-job", action="store_true", help="keep the job folder after success")
    parser.add_argument("--block-size", type=int, default=4096, help="block side in pixels (default 4096)")
    parser.add_argument("--model", help="model name or card path (default: the bundled default model)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", default="auto", help="auto (default), fp32, bf16 or fp16")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: from the model card)")
    parser.add_argument(
        "--min-area",
        type=float,
        default=DEFAULT_MIN_AREA_M2,
        help=f"drop buildings smaller than this, m² ({DEFAULT_MIN_AREA_M2:g})",
    )
    parser.add_argument("--regularize", action="store_true", help="square building outlines")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (the card's policy)")
    parser.add_argument("--batch-size", type=int, help="tiles per batch (default: from device memory)")
    parser.add_argument("--yes", action="store_true", help="start a job estimated to take hours without asking")
    add_overwrite_argument(parser)
    add_common_arguments(parser)
    parser.set_defaults(run=run)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class BlockBar:
    """`blocks 12/40 | 3.1 MP/s | ETA 4 min` on the reporter's stream (redrawn in place on a terminal)."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.last = 0.0
        self.finished = False

    def __call__(self, status: Any) -> None:
        now = time.monotonic()
        final = status.blocks_done >= status.blocks_total
        if final and self.finished:
            return
        self.finished = final
        interval = 0.2 if self.reporter.stream.isatty() else 5.0
        if not final and now - self.last < interval:
            return
        self.last = now
        eta = status.eta_s
        filled = int(30 * status.blocks_done / max(1, status.blocks_total))
        line = (
            f"blocks [{'#' * filled}{'.' * (30 - filled)}] {status.blocks_done}/{status.blocks_total}"
            f" | {status.mp_per_s:.2f} MP/s | ETA {_duration(eta) if eta is not None else '?'}"
        )
        stream = self.reporter.stream
        stream.write(("\r" + line) if stream.isatty() else (line + "\n"))
        if final and stream.isatty():
            stream.write("\n")
        stream.flush()


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from ..core.batch.runner import BatchOptions, run_batch
    from ..core.common.errors import ModelError
    from ..core.common.vocabulary import BUILDINGS_LAYER
    from ..core.engine.options import InferenceOptions
    from ..core.io.paths import check_existing_outputs
    from ..core.vectors.polygons import PolygonOptions
    from ..core.zoo.modelcard import default_model_name, find_model

    model_name = args.model or default_model_name("EO")
    if model_name is None:
        raise ModelError("No model given and no bundled model found. Pass --model NAME (see `models`).")
    card = find_model(model_name)
    inference_options = InferenceOptions(
        device=args.device, tta=args.tta, precision=args.precision, batch_size=args.batch_size
    )
    polygon_options = PolygonOptions(
        threshold=card.threshold if args.threshold is None else args.threshold,
        min_area_m2=args.min_area,
        regularize=args.regularize,
    )
    options = BatchOptions(
        workers=args.workers,
        scheduler=args.scheduler,
        block_size=args.block_size,
        job_dir=args.job_dir,
        resume=args.resume,
        keep_job=args.keep_job,
        probability_dir=args.probability_dir,
        pattern=args.pattern,
        confirmed=args.yes,
    )
    check_existing_outputs({"--out": args.out}, args.overwrite, {"--out": [BUILDINGS_LAYER]})
    result = run_batch(
        args.inputs,
        args.out,
        card,
        inference_options,
        polygon_options,
        options,
        is_canceled=reporter.is_canceled,
        on_status=BlockBar(reporter),
        on_info=reporter.info,
    )
    lines = result.summary_lines() + [f"Polygons: {result.buildings_path}"]
    lines += [f"Probability: {p}" for p in result.probability_paths]
    reporter.summary(result.to_dict(), lines)
    return 0
