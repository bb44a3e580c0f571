#!/usr/bin/env python3
"""Detect on the user path: where the time goes, and whether bf16 gives fp32's buildings.

Default: `detect` (core.engine.pipeline.detect_buildings, the CLI's and Processing's path) with the default
model on a 4096 x 4096 RGB raster of real imagery (the xView2 Joplin mosaic, mirrored to 4 tiles, declared at
0.5 m so it runs at the raster's own grid), one fresh process per precision. Prints one row per precision
with the stage breakdown, the end-to-end and inference-stage MP/s, and the load average before and after.

    .venv/bin/python scripts/bench_detect.py                    # precisions auto and fp32, 2 threads
    .venv/bin/python scripts/bench_detect.py --precision auto   # one row
    .venv/bin/python scripts/bench_detect.py --gate             # bf16 against fp32 on every EO area of the data pack

--gate runs every EO area of ../shared/data in fp32 and in bf16 (forced), labels the buildings of both
outputs as the polygon stage does, and prints the building F1 and mask IoU between them over the whole
area, next to what the engine's own gate (`--precision auto`, a few sampled tiles) decided.
Rasters are written to /tmp (never into the repository). Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BENCH_DIR = Path(os.environ.get("FOOTPRINT_BENCH_DIR", tempfile.gettempdir())) / "footprint_bench"
DATA = REPO.parent / "shared" / "data" / "eo"
SIDE = 4096
STAGES = ("statistics", "model", "precision check", "read", "scale", "network", "blend", "write", "cog")


def real_raster(side: int = SIDE) -> Path:
    """A side x side RGB GeoTIFF of real imagery: the Joplin mosaic mirrored into 2 x 2 (cached)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"joplin_rgb_{side}.tif"
    if path.exists():
        return path
    with rasterio.open(DATA / "xview2_joplin_pre" / "mosaic.vrt") as ds:
        image = ds.read()
    row = np.concatenate([image, image[:, :, ::-1]], axis=2)
    mosaic = np.concatenate([row, row[:, ::-1, :]], axis=1)
    reps = -(-side // mosaic.shape[1])
    mosaic = np.tile(mosaic, (1, reps, reps))[:, :side, :side]
    profile = dict(
        driver="GTiff",
        width=side,
        height=side,
        count=3,
        dtype="uint8",
        crs="EPSG:32615",
        transform=from_origin(360000.0, 4100000.0, 0.5, 0.5),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        predictor=2,
        photometric="RGB",
    )
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(mosaic)
    os.replace(tmp, path)
    return path


def detect_once(precision: str, threads: int) -> dict:
    """One detect in this process: the stage seconds, buildings and rates."""
    import torch

    from footprint_plugin.core.engine.options import InferenceOptions
    from footprint_plugin.core.engine.pipeline import detect_buildings
    from footprint_plugin.core.zoo.modelcard import default_model_name, find_model

    torch.set_num_threads(threads)
    card = find_model(default_model_name("EO"))
    raster = real_raster()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_detect_") as folder:
        started = time.perf_counter()
        result = detect_buildings(
            raster,
            Path(folder) / "buildings.gpkg",
            card,
            inference_options=InferenceOptions(device="cpu", precision=precision),
        )
        wall = time.perf_counter() - started
    timings = dict(result.timings)
    return {
        "precision": result.precision,
        "requested": precision,
        "model": card.display_name,
        "megapixels": result.megapixels,
        "wall_s": wall,
        "inference_s": result.inference_seconds,
        "polygon_s": result.polygon_seconds,
        "buildings": result.n_buildings,
        "timings": timings,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "warnings": result.warnings,
    }


def in_child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_detect_table(rows: list[dict]) -> None:
    header = ["precision", "MP/s e2e", "MP/s infer", "wall s", "infer s", "polygons s", "poly %"]
    header += [f"{s} s" for s in STAGES] + ["other s", "buildings", "load"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        if not row:
            print("| (failed) |")
            continue
        timings = row["timings"]
        other = row["inference_s"] - sum(timings.get(s, 0.0) for s in STAGES)
        cells = [
            f"{row['requested']} -> {row['precision']}",
            f"{row['megapixels'] / row['wall_s']:.2f}",
            f"{row['megapixels'] / row['inference_s']:.2f}",
            f"{row['wall_s']:.1f}",
            f"{row['inference_s']:.1f}",
            f"{row['polygon_s']:.1f}",
            f"{100 * row['polygon_s'] / row['wall_s']:.0f}",
        ]
        cells += [f"{timings.get(s, 0.0):.2f}" for s in STAGES] + [f"{other:.2f}", str(row["buildings"])]
        cells.append(f"{row['load_before']:.2f} -> {row['load_after']:.2f}")
        print("| " + " | ".join(cells) + " |", flush=True)


# --------------------------------------------------------------------------- the bf16 gate, per area


def gate_areas() -> list[Path]:
    """Every EO area's raster: its mosaic (one per zoom for the OpenAerialMap areas), or its tiles."""
    rasters = []
    for area in sorted(p for p in DATA.iterdir() if p.is_dir()):
        mosaics = sorted(area.glob("mosaic*.vrt"))
        rasters += mosaics or sorted((area / "tiles").glob("*.tif"))
    return rasters


def compare_area(raster: Path, threads: int) -> dict:
    """fp32 against bf16 over one whole raster, and the engine's own decision on it."""
    import torch

    from footprint_plugin.core.common.errors import FootprintError
    from footprint_plugin.core.engine.inference import predict_raster
    from footprint_plugin.core.engine.options import InferenceOptions
    from footprint_plugin.core.engine.precision import compare_outputs
    from footprint_plugin.core.io.raster_io import read_probability
    from footprint_plugin.core.zoo.modelcard import default_model_name, find_model

    torch.set_num_threads(threads)
    card = find_model(default_model_name("EO"))
    row = {"raster": f"{raster.parent.name}/{raster.name}" if raster.parent.name != "tiles" else raster.name}
    outputs = {}
    with tempfile.TemporaryDirectory(prefix="bench_gate_") as folder:
        try:
            for precision in ("fp32", "bf16", "auto"):
                out = Path(folder) / f"{precision}.tif"
                result = predict_raster(raster, card, out, InferenceOptions(device="cpu", precision=precision))
                if precision == "auto":
                    row["auto"] = result.precision
                    row["check"] = result.precision_check
                else:
                    outputs[precision] = read_probability(out)
        except FootprintError as exc:
            return {**row, "error": str(exc)[:80]}
    (ref, valid, heads), (cand, _v, _h) = outputs["fp32"], outputs["bf16"]
    ref[:, ~valid], cand[:, ~valid] = 0.0, 0.0
    gsd = result.gsd_m
    agreement = compare_outputs([ref], [cand], heads, card.threshold, gsd, max(1, int(10.0 / gsd**2)))
    return {**row, "f1": agreement.building_f1, "iou": agreement.mask_iou, "buildings": agreement.buildings}


def print_gate_table(threads: int) -> None:
    from footprint_plugin.core.engine.precision import BF16_MIN_BUILDING_F1, BF16_MIN_MASK_IOU

    print(f"bf16 against fp32 over each whole area (needs F1 >= {BF16_MIN_BUILDING_F1}, IoU >= {BF16_MIN_MASK_IOU})")
    print(
        "| raster | fp32 buildings | building F1 | mask IoU | equivalent | auto | its sample: tiles, buildings, F1, IoU | load |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for raster in gate_areas():
        row = in_child(["--compare", str(raster), "--threads", str(threads)])
        if "error" in row or not row:
            print(f"| {row.get('raster', raster.name)} | skipped: {row.get('error', 'failed')} |", flush=True)
            continue
        equivalent = row["f1"] >= BF16_MIN_BUILDING_F1 and row["iou"] >= BF16_MIN_MASK_IOU
        check = row.get("check") or {}
        sample = (
            f"{check['tiles']}, {check['buildings']}, {check['building_f1']:.3f}, {check['mask_iou']:.3f}"
            if check
            else "-"
        )
        print(
            f"| {row['raster']} | {row['buildings']} | {row['f1']:.3f} | {row['iou']:.3f} | "
            f"{'yes' if equivalent else 'no'} | {row['auto']} | {sample} | {os.getloadavg()[0]:.2f} |",
            flush=True,
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", default=["auto", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gate", action="store_true", help="bf16 against fp32 on every EO area")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--compare", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(detect_once(args.child, args.threads)))
        return 0
    if args.compare:
        print(json.dumps(compare_area(Path(args.compare), args.threads)))
        return 0
    print(f"{os.cpu_count()} cores, {args.threads} torch threads, load average {os.getloadavg()[0]:.2f}")
    if args.gate:
        print_gate_table(args.threads)
        return 0
    raster = real_raster()
    print(f"detect on {raster.name} ({SIDE} x {SIDE} RGB, 0.5 m), default model, one process per row")
    rows = [in_child(["--child", precision, "--threads", str(args.threads)]) for precision in args.precision]
    print_detect_table(rows)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
