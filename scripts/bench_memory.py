"""Peak memory (RSS) of a whole detection against raster width, at a fixed height: it must stay flat.

Each width runs in its own process (peak RSS is per process, from resource.getrusage), on a VRT that
repeats one small synthetic tile (cheap to create, real GDAL reads), through the real pipeline
(statistics, tiled inference in column windows, COG writing, polygons, GeoPackage) with a cheap
pointwise network in place of the model's weights, so the figures are the engine's, not the network's.

    .venv/bin/python scripts/bench_memory.py [--widths 4096,32768,131072] [--height 1024] [--json]
    .venv/bin/python scripts/bench_memory.py --one WIDTH --height H --folder DIR   # one run, prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TILE = 512


def make_vrt(folder: Path, width: int, height: int) -> Path:
    """A width x height x 3 VRT that repeats one TILE x TILE GeoTIFF of synthetic roofs."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    # Imported here, not at the top: the launcher process must stay small (stdlib only), see main().
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_inference import repeat_tile_vrt  # the one VRT writer of the benchmarks

    source = folder / "tile.tif"
    if not source.exists():
        rng = np.random.default_rng(0)
        image = rng.normal(90, 12, (3, TILE, TILE)).clip(0, 255).astype(np.uint8)
        for _ in range(40):
            r, c = rng.integers(0, TILE - 40, 2)
            image[:, r : r + rng.integers(10, 40), c : c + rng.integers(10, 40)] = 210
        profile = dict(
            driver="GTiff",
            width=TILE,
            height=TILE,
            count=3,
            dtype="uint8",
            crs="EPSG:32631",
            transform=from_origin(600000.0, 5750000.0, 0.5, 0.5),
            tiled=True,
            blockxsize=256,
            blockysize=256,
        )
        with rasterio.open(source, "w", **profile) as dst:
            dst.write(image)
    return repeat_tile_vrt(source, width, height, folder / f"wide_{width}x{height}.vrt")


def cheap_card_and_model():
    """A 1-head card and a pointwise network: bright pixels are buildings (exercises every stage)."""
    import torch

    from footprint_plugin.core.zoo.modelcard import ModelCard

    class Bright(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.mean(dim=1, keepdim=True) - 0.5) * 40.0

    card = ModelCard(
        name="bench_pointwise",
        architecture="unet_mobilenetv2",
        in_channels=3,
        out_channels=1,
        band_roles=["red", "green", "blue"],
        scaling={"method": "divide", "value": 255.0},
        tile_size=TILE,
        overlap=64,
        tta="none",
    )
    return card, Bright()


def _vm_hwm_mb() -> Optional[int]:
    """Peak RSS of this process image from /proc (Linux), a cross-check of getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def run_one(width: int, height: int, folder: Path) -> dict:
    """One detection in this process; returns its figures with the peak RSS."""
    import torch

    from footprint_plugin.core.engine.inference import InferenceOptions
    from footprint_plugin.core.engine.pipeline import detect_buildings

    torch.set_num_threads(1)
    raster = make_vrt(folder, width, height)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    card, model = cheap_card_and_model()
    started = time.perf_counter()
    result = detect_buildings(
        raster,
        folder / "buildings.gpkg",
        card,
        probability_path=folder / "probability.tif",
        inference_options=InferenceOptions(device="cpu", precision="fp32"),
        model=model,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "vm_hwm_mb": _vm_hwm_mb(),
        "width": width,
        "height": height,
        "megapixels": round(result.megapixels, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "buildings": result.n_buildings,
        "peak_rss_mb": round(peak),
        "rss_before_run_mb": round(baseline),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="4096,32768,131072")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--one", type=int, help="run one width in this process and print its JSON")
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.one:
        folder = args.folder or Path(tempfile.mkdtemp(prefix="footprint_bench_memory_"))
        if args.in_process:
            print(json.dumps(run_one(args.one, args.height, folder)))
            return 0
        # Linux keeps a process's peak RSS across exec, so a child started by a big process (pytest
        # after 400 tests) reports its parent's peak. This small process (stdlib only) starts the run.
        command = [
            sys.executable,
            __file__,
            "--one",
            str(args.one),
            "--height",
            str(args.height),
            "--folder",
            str(folder),
        ]
        done = subprocess.run([*command, "--in-process"], capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        with tempfile.TemporaryDirectory(prefix="footprint_bench_memory_") as folder:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(
                [sys.executable, __file__, "--one", str(width), "--height", str(args.height), "--folder", folder],
                capture_output=True,
                text=True,
                env=env,
            )
            if done.returncode:
                print(done.stdout + done.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"peak RSS against raster width, height {args.height} px, tile {TILE} px, pointwise network (1 thread)")
    print(f"{'width':>8} {'MP':>7} {'seconds':>8} {'buildings':>9} {'RSS before MB':>13} {'peak RSS MB':>11}")
    for row in rows:
        print(
            f"{row['width']:>8} {row['megapixels']:>7} {row['seconds']:>8} {row['buildings']:>9} "
            f"{row['rss_before_run_mb']:>13} {row['peak_rss_mb']:>11}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
