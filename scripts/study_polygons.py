"""Post-processing study on the validation blocks of every training area (probabilities cached once per model).

    .venv/bin/python scripts/study_polygons.py cache --model model_zoo/footprint_eo_lite0.json --out /tmp/poly/v20.pkl
    .venv/bin/python scripts/study_polygons.py score /tmp/poly/v20.pkl [--grid default|steps|full]

`cache` prepares the training areas exactly as scripts/train_default_model.py does (same spatial split, the east/
south 20 % strip of each area), predicts each validation block without TTA (training's predict_array, the tiles
Detect buildings uses) and stores probabilities, masks and clipped ground truth. `score` polygonizes the cache with
several PolygonOptions and prints object F1 at IoU 0.5 per area and over all areas (the validation F1 the
training run reports is the 'all' column with the default options and the card's threshold).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))


def cache(model: str, out: Path, data: Path) -> None:
    import torch
    from affine import Affine
    from train_default_model import TEST_AREAS, build_pairs

    from footprint_plugin.core.learning.chips import assign_spatial_blocks
    from footprint_plugin.core.learning.dataset import prepare_rasters
    from footprint_plugin.core.learning.labels import clip_ground_truth
    from footprint_plugin.core.learning.validation import predict_array
    from footprint_plugin.core.zoo.modelcard import find_model
    from footprint_plugin.core.zoo.weights import load_model

    torch.set_num_threads(1)
    card = find_model(model)
    rasters, _fixed = prepare_rasters(build_pairs(data), card, 1.0, None, lambda _f: None, print)
    test_names = {name for name, _r, _l in TEST_AREAS}
    for raster in rasters:
        if raster.name in test_names:
            raster.role = "test"
    assign_spatial_blocks(rasters, 0.2)
    net = load_model(card, torch.device("cpu"))
    blocks = []
    for raster in rasters:
        mask = raster.eval_mask()
        if raster.role == "test" or mask is None or not mask.any():
            continue
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = mask[r0:r1, c0:c1]
        transform = raster.transform * Affine.translation(c0, r0)
        started = time.perf_counter()
        prob = predict_array(net, raster.image[:, r0:r1, c0:c1], torch.device("cpu"), card.tile_size, card.overlap)
        truth = clip_ground_truth(raster.labels, transform, crop)
        blocks.append(
            {
                "name": raster.name,
                "prob": prob.astype(np.float16),
                "valid": crop,
                "transform": tuple(transform)[:6],
                "crs_wkt": raster.crs_wkt,
                "truth": truth,
                "gsd_m": card.gsd_m,
            }
        )
        print(f"{raster.name}: {crop.shape}, {len(truth)} buildings, {time.perf_counter() - started:.1f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as handle:
        pickle.dump({"model": card.display_name, "threshold": card.threshold, "blocks": blocks}, handle)


def score(blocks: list[dict], options) -> dict[str, dict[str, int]]:
    """tp/fp/fn per area for one set of PolygonOptions."""
    from footprint_plugin.core.vectors.evaluate import score_polygons
    from footprint_plugin.core.vectors.polygons import polygonize_array

    per_area: dict[str, dict[str, int]] = {}
    for block in blocks:
        result = polygonize_array(
            block["prob"].astype(np.float32), block["transform"], block["crs_wkt"], options, nodata_mask=~block["valid"]
        )
        scores, _matches = score_polygons(list(result.geometries), block["truth"], iou_threshold=0.5)
        entry = per_area.setdefault(block["name"], {"tp": 0, "fp": 0, "fn": 0})
        entry["tp"] += int(scores.tp)
        entry["fp"] += int(scores.fp)
        entry["fn"] += int(scores.fn)
    return per_area


def f1(entry: dict[str, int]) -> float:
    denominator = 2 * entry["tp"] + entry["fp"] + entry["fn"]
    return 2 * entry["tp"] / denominator if denominator else 0.0


def grid(name: str, base):
    """Named option sets: v2.0's post-processing, each new step added in turn, then one setting varied at a time."""
    legacy = replace(
        base, grow_threshold=None, merge_max_contact=None, merge_max_boundary=None, hole_area_m2=10.0, regularize=False
    )
    merge = replace(legacy, merge_max_contact=0.3, merge_max_boundary=0.7)
    steps = [
        ("v2.0 post-processing", legacy),
        ("+ merge pieces (border contact < 0.3, boundary < 0.7)", merge),
        ("+ grow seeds down to 0.45", replace(merge, grow_threshold=0.45)),
        ("+ grow seeds down to 0.4", replace(merge, grow_threshold=0.4)),
        ("merge + fill holes < 50 m2", replace(merge, hole_area_m2=50.0)),
        ("merge + fill all holes", replace(merge, hole_area_m2=1e9)),
        ("merge + snap (regularize)", replace(merge, regularize=True)),
        ("merge + fill holes < 50 m2 + snap", replace(merge, hole_area_m2=50.0, regularize=True)),
        ("snap only", replace(legacy, regularize=True)),
        ("grow 0.4 only", replace(legacy, grow_threshold=0.4)),
        ("current defaults", base),
    ]
    if name == "steps":
        return steps
    extra = []
    for contact in (0.1, 0.2, 0.3, 0.4, 0.5):
        for boundary in (0.6, 0.7, 0.8, None):
            extra.append(
                (
                    f"merge c<{contact} b<{boundary}",
                    replace(legacy, merge_max_contact=contact, merge_max_boundary=boundary),
                )
            )
    return steps + extra


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("cache")
    make.add_argument("--model", required=True)
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    run = sub.add_parser("score")
    run.add_argument("cache", type=Path)
    run.add_argument("--grid", choices=("default", "steps", "full"), default="default")
    run.add_argument("--set", nargs="*", default=[], help="module constants for a study: instances.NAME=VALUE")
    args = parser.parse_args(argv)
    if args.command == "cache":
        cache(args.model, args.out, args.data)
        return 0
    from footprint_plugin.core.vectors import instances
    from footprint_plugin.core.vectors.polygons import PolygonOptions

    for assignment in args.set:
        key, value = assignment.split("=", 1)
        setattr(instances, key.split(".")[-1], float(value) if value[0].isdigit() else value)
    with open(args.cache, "rb") as handle:
        stored = pickle.load(handle)
    base = PolygonOptions(threshold=stored["threshold"])
    sets = [("defaults", base)] if args.grid == "default" else grid(args.grid, base)
    names = sorted({block["name"] for block in stored["blocks"]})
    print(f"{stored['model']}: object F1 at IoU 0.5 on the validation blocks")
    print(" | ".join(["options", "all F1 (TP/FP/FN)"] + names))
    rows = []
    for label, options in sets:
        started = time.perf_counter()
        per_area = score(stored["blocks"], options)
        total = {k: sum(e[k] for e in per_area.values()) for k in ("tp", "fp", "fn")}
        cells = [f"{f1(per_area[n]):.3f}" for n in names]
        seconds = time.perf_counter() - started
        print(
            " | ".join([label, f"{f1(total):.3f} ({total['tp']}/{total['fp']}/{total['fn']})"] + cells)
            + f" | {seconds:.1f} s",
            flush=True,
        )
        rows.append({"options": label, "all": total, "per_area": per_area})
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
