"""Score the bundled default model on the areas held out of its training, through the user-facing path.

    .venv/bin/python scripts/evaluate_default_model.py [--model NAME] [--tta] [--areas kampala_z19 ...]

Each held-out raster goes through detect_buildings (tiled inference + polygons, as `detect` does)
and evaluate_files (SpaceNet object F1 at IoU 0.5, clipped to the raster, as `evaluate` does).
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
    args = parser.parse_args(argv)

    from footprint_plugin.core.engine.inference import InferenceOptions
    from footprint_plugin.core.engine.pipeline import detect_buildings
    from footprint_plugin.core.vectors.evaluate import evaluate_files
    from footprint_plugin.core.zoo.modelcard import default_model_name, find_model

    card = find_model(args.model or default_model_name("EO"))
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, raster, labels in (area for area in HELD_OUT if area[0] in args.areas):
            predicted = Path(scratch) / f"{name}.gpkg"
            detection = detect_buildings(
                args.data / raster, predicted, card, inference_options=InferenceOptions(tta=args.tta)
            )
            scores = evaluate_files(
                predicted, args.data / labels, raster_path=args.data / raster, min_area_m2=args.min_area
            )
            results[name] = {
                **scores.scores.to_dict(),
                "pixel_iou": round(scores.pixel["iou"], 4),
                "n_ground_truth": scores.n_ground_truth,
                "detect_seconds": round(detection.seconds, 1),
            }
            print(name, json.dumps(results[name]), flush=True)
    print(
        json.dumps(
            {"model": card.display_name, "tta": args.tta, "min_area_m2": args.min_area, "areas": results}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
