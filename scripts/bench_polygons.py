"""Polygonization speed on a synthetic building mask (default 100 megapixels), one CPU thread.

Cases: a clean mask (threshold + polygonize), the same mask with speckle noise, and three-head
probabilities split by the seeded watershed. Prints a table; targets are <= 3 s per 100 MP for a
clean mask and <= 12 s per 100 MP with watershed. CPU seconds are shown beside wall seconds because
on a shared machine the wall clock also counts time spent waiting for a core.

    .venv/bin/python scripts/bench_polygons.py [--megapixels 100] [--json]
    .venv/bin/python scripts/bench_polygons.py --detect [--threads 2]

--detect measures the issue-21 target instead: `detect` (default model, defaults) on bench_inference.py's
4096 x 4096 RGB raster, then the polygon stage alone on its probability GeoTIFF, v2.0's post-processing against
the current defaults; the polygon stage should take <= 10 % of detect's time.
"""

from __future__ import annotations

import os

# One core, as the targets say; set before numpy/scipy load their thread pools.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from footprint_plugin.core.vectors.polygons import PolygonOptions, polygonize_array  # noqa: E402

TARGETS_S_PER_100MP = {"clean": 3.0, "speckled": None, "watershed": 12.0}


def building_labels(side: int, seed: int = 0) -> np.ndarray:
    """int32 ids of rectangular buildings (8-40 px, some touching) covering about a fifth of the area."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((side, side), np.int32)
    count = int(side * side * 0.2 / 500)
    heights = rng.integers(8, 40, count)
    widths = rng.integers(8, 40, count)
    rows = rng.integers(0, side - 40, count)
    cols = rng.integers(0, side - 40, count)
    for index in range(count):
        r, c = rows[index], cols[index]
        labels[r : r + heights[index], c : c + widths[index]] = index + 1
    return labels


def three_heads(labels: np.ndarray) -> np.ndarray:
    """footprint, boundary, contact probabilities (float32) from building ids, like a 3-head model's output."""
    footprint = (labels > 0).astype(np.float32)
    edge = np.zeros(labels.shape, bool)
    contact = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        a = labels.take(range(labels.shape[axis] - 1), axis=axis)
        b = labels.take(range(1, labels.shape[axis]), axis=axis)
        differs = a != b
        touching = differs & (a > 0) & (b > 0)
        for target, values in ((edge, differs), (contact, touching)):
            head = [slice(None)] * 2
            tail = [slice(None)] * 2
            head[axis] = slice(0, -1)
            tail[axis] = slice(1, None)
            target[tuple(head)] |= values
            target[tuple(tail)] |= values
    return np.stack([footprint, edge.astype(np.float32) * 0.9, contact.astype(np.float32) * 0.9])


def run_case(name: str, prob: np.ndarray, options: PolygonOptions) -> dict:
    started, cpu_started = time.perf_counter(), time.process_time()
    result = polygonize_array(prob, (0.5, 0, 600000.0, 0, -0.5, 5750000.0), "EPSG:32631", options)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    megapixels = prob.shape[-1] * prob.shape[-2] / 1e6
    return {
        "case": name,
        "megapixels": round(megapixels, 1),
        "seconds": round(seconds, 2),
        "mp_per_s": round(megapixels / seconds, 1),
        "s_per_100mp": round(seconds * 100 / megapixels, 2),
        "cpu_s_per_100mp": round(cpu_seconds * 100 / megapixels, 2),
        "polygons": len(result.geometries),
        "target_s_per_100mp": TARGETS_S_PER_100MP[name],
    }


def detect_case(threads: int) -> list[dict]:
    """detect on the 4096² benchmark raster, then its polygon stage with v2.0's and the current options."""
    import tempfile

    import torch
    from bench_inference import make_raster

    from footprint_plugin.core.engine.pipeline import detect_buildings
    from footprint_plugin.core.vectors.polygons import polygonize_raster
    from footprint_plugin.core.zoo.modelcard import default_model_name, find_model

    torch.set_num_threads(threads)
    card = find_model(default_model_name("EO"))
    raster = make_raster(4096)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        probability = Path(scratch) / "prob.tif"
        detection = detect_buildings(raster, Path(scratch) / "b.gpkg", card, probability_path=probability)
        rows.append(
            {"case": "detect (all stages)", "seconds": round(detection.seconds, 2), "buildings": detection.n_buildings}
        )
        legacy = PolygonOptions(threshold=card.threshold, merge_max_contact=None, merge_max_boundary=None)
        for name, options in (
            ("polygons, v2.0 options", legacy),
            ("polygons, defaults", PolygonOptions(threshold=card.threshold)),
        ):
            best = min((polygonize_raster(probability, options) for _ in range(3)), key=lambda r: r.seconds)
            rows.append({"case": name, "seconds": round(best.seconds, 3), "buildings": len(best.geometries)})
    for row in rows[1:]:
        row["share_of_detect"] = round(row["seconds"] / rows[0]["seconds"], 3)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=100.0, help="mask size (default 100)")
    parser.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    parser.add_argument("--detect", action="store_true", help="polygon share of detect on the 4096² raster")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for --detect")
    args = parser.parse_args()
    if args.detect:
        rows = detect_case(args.threads)
        print(f"{'case':<24} {'seconds':>8} {'buildings':>9} {'share of detect':>16}  (target <= 0.10)")
        for row in rows:
            print(f"{row['case']:<24} {row['seconds']:>8} {row['buildings']:>9} {row.get('share_of_detect', ''):>16}")
        if args.json:
            print(json.dumps(rows))
        return 0
    side = int(math.sqrt(args.megapixels * 1e6))
    labels = building_labels(side)
    run_case("clean", three_heads(labels[:256, :256]), PolygonOptions())  # warm-up: imports, caches
    clean = (labels > 0).astype(np.float32)
    rows = [run_case("clean", clean, PolygonOptions(split="none"))]
    rng = np.random.default_rng(1)
    speckled = clean.copy()
    flip = rng.random(clean.shape, dtype=np.float32) < 0.02  # 2 % of pixels flipped: salt and pepper
    speckled[flip] = 1.0 - speckled[flip]
    del flip
    rows.append(run_case("speckled", speckled, PolygonOptions(split="none")))
    del speckled, clean
    heads = three_heads(labels)
    del labels
    rows.append(run_case("watershed", heads, PolygonOptions(split="watershed")))
    print(f"Polygonization benchmark ({side} x {side} px, one thread, 2048 px blocks)")
    print(
        f"{'case':<10} {'MP':>6} {'seconds':>8} {'MP/s':>7} {'s/100MP':>8} {'CPU s/100MP':>12} {'target':>7} {'polygons':>9}"
    )
    for row in rows:
        target = row["target_s_per_100mp"]
        target_text = f"<= {target:g}" if target else "-"
        print(
            f"{row['case']:<10} {row['megapixels']:>6} {row['seconds']:>8} {row['mp_per_s']:>7} "
            f"{row['s_per_100mp']:>8} {row['cpu_s_per_100mp']:>12} {target_text:>7} {row['polygons']:>9}"
        )
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
