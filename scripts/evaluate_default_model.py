"""Score the bundled default model on the areas held out of its training, through the user-facing path.

    .venv/bin/python scripts/evaluate_default_model.py [--model NAME] [--tta] [--areas kampala_z19 ...]
        [--polygons default|v2.0] [--probabilities DIR] [--quicklooks DIR]

Each held-out raster goes through detect_buildings (tiled inference + polygons, as `detect` does)
and evaluate_files (SpaceNet object F1 at IoU 0.5, clipped to the raster, as `evaluate` does).
--polygons v2.0 uses the post-processing v2.0 shipped with (no merging of roof pieces). --probabilities keeps
each area's probability raster in DIR and reuses it when it is there (same model and TTA only: the file name
says both), so several post-processings share one inference. --quicklooks draws labels and detections.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from train_default_model import TEST_AREAS  # noqa: E402 - the held-out list lives with the training script

HELD_OUT = TEST_AREAS + (
    # Evaluation only: its imagery licence is unknown, so no bundled model is ever trained on it.
    ("xview2_joplin_pre", "eo/xview2_joplin_pre/mosaic.vrt", "eo/xview2_joplin_pre/labels.geojson"),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or card path (default: the bundled default)")
    parser.add_argument("--areas", nargs="+", default=[a[0] for a in HELD_OUT], choices=[a[0] for a in HELD_OUT])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (the card's policy)")
    parser.add_argument("--min-area", type=float, default=0.0, help="ignore polygons smaller than this in both, m²")
    parser.add_argument("--polygons", choices=("default", "v2.0"), default="default", help="post-processing")
    parser.add_argument("--probabilities", type=Path, help="keep and reuse probability rasters in this folder")
    parser.add_argument("--quicklooks", type=Path, help="write a quicklook PNG per area into this folder")
    args = parser.parse_args(argv)

    from footprint_plugin.core.engine.inference import InferenceOptions
    from footprint_plugin.core.engine.pipeline import detect_buildings
    from footprint_plugin.core.vectors.evaluate import evaluate_files
    from footprint_plugin.core.vectors.polygons import PolygonOptions, polygonize_raster, write_buildings
    from footprint_plugin.core.zoo.modelcard import default_model_name, find_model

    card = find_model(args.model or default_model_name("EO"))
    polygon_options = PolygonOptions(threshold=card.threshold)
    if args.polygons == "v2.0":
        polygon_options = PolygonOptions(threshold=card.threshold, merge_max_contact=None, merge_max_boundary=None)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, raster, labels in (area for area in HELD_OUT if area[0] in args.areas):
            predicted = Path(scratch) / f"{name}.gpkg"
            tag = f"{card.name}_{card.version}{'_tta' if args.tta else ''}_{name}.tif"
            kept = args.probabilities / tag if args.probabilities else None
            if kept is not None and kept.exists():
                polygons = polygonize_raster(kept, polygon_options, source=Path(raster).name, model=card.display_name)
                write_buildings(polygons, predicted)
                seconds = polygons.seconds
            else:
                if kept is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                detection = detect_buildings(
                    args.data / raster,
                    predicted,
                    card,
                    probability_path=kept,
                    inference_options=InferenceOptions(tta=args.tta),
                    polygon_options=polygon_options,
                )
                seconds = detection.seconds
            if args.quicklooks:
                from footprint_plugin.core.learning.report import write_quicklook

                args.quicklooks.mkdir(parents=True, exist_ok=True)
                write_quicklook(
                    args.data / raster,
                    [(args.data / labels, {"color": "cyan"}), (predicted, {"color": "red"})],
                    args.quicklooks / f"{name}_{card.version}_{args.polygons}.png",
                    title=f"{name}: {card.display_name}, {args.polygons} polygons (cyan labels, red detections)",
                )
            scores = evaluate_files(
                predicted, args.data / labels, raster_path=args.data / raster, min_area_m2=args.min_area
            )
            results[name] = {
                **scores.scores.to_dict(),
                "pixel_iou": round(scores.pixel["iou"], 4),
                "n_ground_truth": scores.n_ground_truth,
                "seconds": round(seconds, 1),
            }
            print(name, json.dumps(results[name]), flush=True)
    print(
        json.dumps(
            {
                "model": card.display_name,
                "tta": args.tta,
                "polygons": args.polygons,
                "min_area_m2": args.min_area,
                "areas": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
