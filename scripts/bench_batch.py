"""Batch throughput: a folder of adjacent 2048 x 2048 RGB tiles (default 16, one 8192 x 8192 mosaic) with
the bundled model, serially in-process and on a Dask LocalCluster of 1 and 2 worker processes.

Prints, per engine: wall time, MP/s, blocks, the summed in-worker block time, and the scheduler overhead
per block ((wall of the block phase x workers - summed block time) / blocks: the time a worker slot was
not running a block: scheduling, transfers, start-up, stragglers). Also the bare round trip of an empty
Dask task, and the share of pixels computed twice because blocks overlap. Figures, never pass/fail.

    .venv/bin/python scripts/bench_batch.py [--tiles 16] [--tile-size 2048] [--block-size 4096] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_tiles(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """A square-ish grid of touching 0.5 m RGB tiles: textured ground with bright and dark roofs."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    columns = int(math.ceil(math.sqrt(count)))
    paths = []
    for index in range(count):
        row, col = divmod(index, columns)
        image = rng.normal(95, 14, (3, size, size)).clip(0, 255).astype(np.uint8)
        for _ in range(size * size // 6000):
            h, w = rng.integers(12, 50, 2)
            r, c = rng.integers(0, size - h), rng.integers(0, size - w)
            image[:, r : r + h, c : c + w] = rng.integers(40, 230)
        path = folder / f"tile_{row:02d}_{col:02d}.tif"
        profile = dict(
            driver="GTiff",
            width=size,
            height=size,
            count=3,
            dtype="uint8",
            crs="EPSG:32631",
            transform=from_origin(600000.0 + col * size * 0.5, 5750000.0 - row * size * 0.5, 0.5, 0.5),
            tiled=True,
            blockxsize=512,
            blockysize=512,
            compress="deflate",
        )
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(image)
        paths.append(path)
    return paths


def empty_task_round_trip(client, n: int = 200) -> float:
    """Seconds per no-op task submitted and gathered through the scheduler."""
    started = time.perf_counter()
    futures = [client.submit(int, i, pure=False) for i in range(n)]
    client.gather(futures)
    return (time.perf_counter() - started) / n


def run(engine: str, tiles_dir: Path, out_dir: Path, card, block_size: int, workers: int) -> dict:
    from footprint_plugin.core.batch.runner import BatchOptions, run_batch
    from footprint_plugin.core.engine.inference import InferenceOptions

    options = BatchOptions(workers=workers, block_size=block_size)
    started = time.perf_counter()
    result = run_batch([tiles_dir], out_dir / f"{engine}.gpkg", card, InferenceOptions(), None, options)
    wall = time.perf_counter() - started
    blocks = max(1, result.blocks_run)
    slots = max(1, result.workers)
    overhead = (result.block_phase_seconds * slots - result.block_compute_seconds) / blocks
    return {
        "engine": engine,
        "workers": result.workers,
        "wall_s": round(wall, 1),
        "mp_per_s": round(result.megapixels / wall, 2),
        "blocks": result.blocks_run,
        "block_s_mean": round(result.block_compute_seconds / blocks, 2),
        "overhead_s_per_block": round(overhead, 2),
        "buildings": result.n_buildings,
        "peak_rss_mb": round(result.peak_block_rss_mb),
        "startup_s": round(result.startup_seconds, 1),
        "megapixels": round(result.megapixels, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiles", type=int, default=16)
    parser.add_argument("--tile-size", type=int, default=2048)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--json", action="store_true")
    args, _unknown = parser.parse_known_args(argv)

    from footprint_plugin.core.batch import distributed as dist
    from footprint_plugin.core.batch import mosaic as mosaic_mod
    from footprint_plugin.core.zoo.modelcard import default_model_name, find_model

    card = find_model(default_model_name("EO"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as scratch:
        tiles_dir, out_dir = Path(scratch) / "tiles", Path(scratch) / "out"
        tiles_dir.mkdir()
        out_dir.mkdir()
        write_tiles(tiles_dir, args.tiles, args.tile_size)
        columns = int(math.ceil(math.sqrt(args.tiles)))
        side_w, side_h = columns * args.tile_size, int(math.ceil(args.tiles / columns)) * args.tile_size
        plan = mosaic_mod.plan_blocks(
            mosaic_mod.Mosaic("m", [], "", side_w, side_h), args.block_size, card.tile_size, card.overlap
        )
        window_px = sum(b.window[2] * b.window[3] for b in plan)
        print(
            f"{args.tiles} tiles of {args.tile_size}^2 px, model {card.display_name}, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.2f}; "
            f"{len(plan)} blocks of {args.block_size} px; pixels read per mosaic pixel: "
            f"{window_px / (side_w * side_h):.2f}",
            flush=True,
        )
        rows.append(run("serial", tiles_dir, out_dir, card, args.block_size, 0))
        print(rows[-1], flush=True)
        if dist.dask_available():
            for workers in (1, 2):
                rows.append(run(f"dask_{workers}", tiles_dir, out_dir, card, args.block_size, workers))
                print(rows[-1], flush=True)
            handle = dist.start_cluster(2)
            try:
                empty = empty_task_round_trip(handle.client)
            finally:
                handle.close()
        else:
            print(dist.DASK_HINT)
            empty = float("nan")
    print()
    print(
        "| engine | workers | wall s | MP/s | blocks | block s | overhead s/block | buildings | peak RSS MB | start-up s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['engine']} | {row['workers']} | {row['wall_s']} | {row['mp_per_s']} | {row['blocks']} | "
            f"{row['block_s_mean']} | {row['overhead_s_per_block']} | {row['buildings']} | {row['peak_rss_mb']} | "
            f"{row['startup_s']} |"
        )
    by_workers = {row["workers"]: row for row in rows if row["engine"].startswith("dask")}
    if 1 in by_workers and 2 in by_workers:
        speedup = by_workers[2]["mp_per_s"] / max(by_workers[1]["mp_per_s"], 1e-9)
        print(f"Scaling 1 -> 2 Dask workers: {speedup:.2f}x ({os.cpu_count()} cores)")
    print(f"Load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"Empty Dask task round trip: {empty * 1000:.1f} ms per task (LocalCluster, 2 workers)")
    if args.json:
        print(json.dumps({"rows": rows, "empty_task_ms": round(empty * 1000, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
