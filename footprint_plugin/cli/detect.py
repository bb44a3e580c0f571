"""`detect RASTER --out BUILDINGS.gpkg`: probability raster and building polygons for one raster."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.common.vocabulary import DEFAULT_MIN_AREA_M2
from . import add_common_arguments, add_overwrite_argument
from .common import Reporter


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect buildings in a raster",
        description="Detect building footprints in a raster; writes polygons and optionally the probability raster.",
    )
    parser.add_argument("raster", type=Path, help="input raster (GeoTIFF, VRT or anything GDAL opens)")
    parser.add_argument("--out", type=Path, required=True, help="output polygons (.gpkg, .geojson, .shp, .fgb)")
    parser.add_argument("--probability", type=Path, help="also keep the probability raster here (.tif)")
    parser.add_argument("--model", help="model name or card path (default: the bundled default model)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: from the model card)")
    parser.add_argument(
        "--min-area",
        type=float,
        default=DEFAULT_MIN_AREA_M2,
        help=f"drop buildings smaller than this, m² ({DEFAULT_MIN_AREA_M2:g})",
    )
    parser.add_argument("--regularize", action="store_true", help="square building outlines")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (the card's policy)")
    parser.add_argument("--float32", action="store_true", help="write float32 probabilities instead of uint8")
    parser.add_argument("--batch-size", type=int, help="tiles per batch (default: from device memory)")
    add_overwrite_argument(parser)
    add_common_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from ..core.common.errors import ModelError
    from ..core.common.vocabulary import BUILDINGS_LAYER, resolve_threshold
    from ..core.engine.inference import InferenceOptions
    from ..core.engine.pipeline import check_detect_job, detect_buildings
    from ..core.io.paths import check_existing_outputs
    from ..core.vectors.polygons import PolygonOptions
    from ..core.zoo.modelcard import default_model_name, find_model, model_warnings

    for warning in model_warnings():
        reporter.info(f"Warning: {warning}")
    model_name = args.model or default_model_name("EO")
    if model_name is None:
        raise ModelError("No model given and no bundled model found. Pass --model NAME (see `models`).")
    card = find_model(model_name)
    inference_options = InferenceOptions(
        device=args.device,
        tta=args.tta,
        output_dtype="float32" if args.float32 else "uint8",
        batch_size=args.batch_size,
    )
    polygon_options = PolygonOptions(
        threshold=resolve_threshold(args.threshold, card.threshold),
        min_area_m2=args.min_area,
        regularize=args.regularize,
    )
    # Every setting and output path is checked now, in the words of the command line, before the model loads.
    check_detect_job(
        args.raster,
        args.out,
        args.probability,
        inference_options,
        polygon_options,
        labels={"raster": "RASTER", "vector": "--out", "probability": "--probability"},
    )
    check_existing_outputs(
        {"--out": args.out, "--probability": args.probability}, args.overwrite, {"--out": [BUILDINGS_LAYER]}
    )
    reporter.stage(f"detect {args.raster.name}")
    result = detect_buildings(
        args.raster,
        args.out,
        card,
        probability_path=args.probability,
        inference_options=inference_options,
        polygon_options=polygon_options,
        progress=reporter.progress,
        is_canceled=reporter.is_canceled,
        log=lambda line: reporter.info(f"Note: {line}"),
    )
    lines = result.summary_lines() + [f"Polygons: {result.buildings_path}"]
    if result.probability_path:
        lines.append(f"Probability: {result.probability_path}")
    reporter.summary(result.to_dict(), lines)
    return 0
