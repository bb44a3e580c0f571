"""`evaluate PREDICTED GROUND_TRUTH`: SpaceNet object scores, pixel IoU/Dice, TP/FP/FN layers, JSON report."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_common_arguments, add_overwrite_argument
from .common import Reporter


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score predicted building polygons against ground truth",
        description=(
            "Score predicted building polygons against ground truth the SpaceNet way (IoU >= 0.5, one-to-one "
            "matching) and report precision, recall, F1 and pixel IoU/Dice. Both layers are reprojected to one "
            "metric CRS; ground truth is clipped to the AOI and/or raster extent."
        ),
    )
    parser.add_argument("predicted", type=Path, help="predicted polygons (.gpkg, .geojson, .shp, ...)")
    parser.add_argument("ground_truth", type=Path, help="ground-truth polygons")
    parser.add_argument("--aoi", type=Path, metavar="AOI", help="area of interest polygons: score only inside them")
    parser.add_argument(
        "--raster",
        type=Path,
        metavar="RASTER",
        help="raster the predictions came from: clip to its extent, pixel scores on its grid",
    )
    parser.add_argument(
        "--out-layers",
        type=Path,
        metavar="LAYERS.gpkg",
        help="write true_positives/false_positives/false_negatives layers (.gpkg)",
    )
    parser.add_argument(
        "--min-area", type=float, default=0.0, metavar="M2", help="ignore polygons smaller than this in both, m² (0)"
    )
    parser.add_argument("--iou", type=float, default=0.5, help="IoU needed for a match (0.5, SpaceNet)")
    parser.add_argument("--report", type=Path, metavar="REPORT.json", help="write a JSON report here")
    add_overwrite_argument(parser)
    add_common_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from ..core.io.paths import check_existing_outputs, check_outputs
    from ..core.vectors.evaluate import LAYER_NAMES, evaluate_files

    # Before any work: a report or layer file that is an input would replace the user's data, and one that
    # exists is replaced only on request (in a GeoPackage, only the three layers; the others are kept).
    outputs = {"--out-layers": args.out_layers, "--report": args.report}
    check_outputs(
        {"PREDICTED": args.predicted, "GROUND_TRUTH": args.ground_truth, "--aoi": args.aoi, "--raster": args.raster},
        outputs,
    )
    check_existing_outputs(outputs, args.overwrite, {"--out-layers": LAYER_NAMES})
    reporter.stage(f"evaluate {args.predicted.name}")
    result = evaluate_files(
        args.predicted,
        args.ground_truth,
        aoi_path=args.aoi,
        min_area_m2=args.min_area,
        out_layers=args.out_layers,
        report_json=args.report,
        raster_path=args.raster,
        iou_threshold=args.iou,
        progress=reporter.progress,
        is_canceled=reporter.is_canceled,
    )
    reporter.summary(result.to_dict(), result.summary_lines())
    return 0
