"""Does fine-tuning a zoo model beat training from scratch on a small label set? Measured on held-out ground.

    .venv/bin/python scripts/finetune_vs_scratch.py --base footprint_eo_mobilenet

Data: Kampala (OAM z20 mosaic, held out of the default model's training). The western half of
its labels is the small training set; the eastern half (a spatial block, never trained on) is
where both models are scored (object F1 at IoU 0.5, real post-processing). Same seed, chips and
epochs for both runs; only the starting weights differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="footprint_eo_mobilenet", help="zoo model name or card path")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/finetune_vs_scratch"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--chips-per-epoch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--runs", default="scratch,finetune", help="which runs (the scratch run does not depend on --base)"
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from footprint_plugin.core.learning.training import TrainingConfig, TrainingPair, train_model
    from footprint_plugin.core.zoo.modelcard import find_model

    kampala = args.data / "eo" / "hotosm_kampala"
    pairs = [TrainingPair(kampala / "mosaic_z20.vrt", kampala / "labels.geojson", name="kampala")]
    base = find_model(args.base)
    common = dict(
        epochs=args.epochs,
        batch_size=8,
        chip_size=256,
        chips_per_epoch=args.chips_per_epoch,
        gsd_m=base.gsd_m,
        heads=len(base.heads),
        val_fraction=0.5,
        patience=args.epochs,
        seed=0,
        device="cpu",
        resume=False,
    )
    results = {}
    for label, config in (
        (
            "scratch",
            TrainingConfig(out_name="kampala_scratch", arch=base.architecture, lr=1e-3, out_dir=args.out_dir, **common),
        ),
        (
            "finetune",
            TrainingConfig(
                out_name="kampala_finetune",
                base_model=args.base,
                lr=3e-4,
                freeze_encoder_epochs=2,
                out_dir=args.out_dir,
                **common,
            ),
        ),
    ):
        if label not in args.runs.split(","):
            continue
        started = time.monotonic()
        result = train_model(pairs, config, log=lambda message, label=label: print(f"[{label}] {message}", flush=True))
        area = result.metrics["per_area"]["kampala"]
        results[label] = {
            **area,
            "best_epoch": result.best_epoch,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "report": str(result.report_png),
        }
    print(json.dumps(results, indent=2))
    for label, area in results.items():
        print(
            f"{label:>9}: held-out Kampala east half F1 {area['f1']:.3f} (P {area['precision']:.3f}, R {area['recall']:.3f}, "
            f"pixel IoU {area['pixel_iou']:.3f}, {area['n_buildings']} buildings), {area['minutes']} min"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
