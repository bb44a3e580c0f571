"""Big-area batch jobs (core/batch/runner.py): seamless mosaics, Dask workers, kills, resume, corrupt tiles.

The model is built here in a second: a random mobile U-Net whose last 1x1 convolution is fitted by least
squares to find the bright roofs of a synthetic image, so it outputs real building blobs. The tiles are a
2 x 2 grid with buildings drawn across the tile edges.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import shapely

from tests.conftest import REPO_ROOT, synthetic_buildings, write_geotiff

TILE = 192  # pixels per tile side; the mosaic is 384 x 384
BLOCK = 240  # block cores of 5 x 48 px (the test model's stride): 2 x 2 blocks, seams at 240 px, not 192
ORIGIN = (600000.0, 5750000.0)
# (row, col, height, width) of roofs drawn across the tile edges (at 192 px), in mosaic pixels.
CROSSING = [(170, 40, 30, 24), (60, 175, 22, 34), (178, 178, 28, 28), (300, 180, 20, 26), (182, 300, 24, 30)]


def make_roof_model(folder: Path) -> Path:
    """A tiny model card + weights that find bright rectangles (64 px tiles, percentile scaling)."""
    import torch

    from footprint_plugin.core.models import create_model
    from footprint_plugin.core.zoo import weights as zoo
    from footprint_plugin.core.zoo.modelcard import ModelCard

    torch.manual_seed(0)
    model = create_model("unet_mobilenetv2", 3, 1).eval()
    image, mask = synthetic_buildings(256, seed=11)
    low, high = np.percentile(image, [2, 98], axis=(1, 2))
    scaled = np.clip((image - low[:, None, None]) / (high - low)[:, None, None], 0, 1).astype(np.float32)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    features = {}
    hook = last.register_forward_hook(lambda _m, inputs, _o: features.setdefault("x", inputs[0]))
    with torch.no_grad():
        model(torch.from_numpy(scaled)[None])
    hook.remove()
    x = features["x"][0].numpy()
    step = mask.shape[0] // x.shape[1]
    design = np.column_stack([x.reshape(x.shape[0], -1).T, np.ones(x.shape[1] * x.shape[2])])
    weights, *_ = np.linalg.lstsq(design, mask[::step, ::step].ravel() * 2.0 - 1.0, rcond=None)
    with torch.no_grad():
        last.weight[:] = torch.from_numpy((6 * weights[:-1]).astype(np.float32)).reshape(last.weight.shape)
        last.bias[:] = float(6 * weights[-1])
    card = ModelCard(
        name="roof_test_model",
        architecture="unet_mobilenetv2",
        in_channels=3,
        out_channels=1,
        band_roles=["red", "green", "blue"],
        sensor="EO",
        scaling={"method": "percentile", "low": 2, "high": 98},
        gsd_m=0.5,
        tile_size=64,
        overlap=16,
        threshold=0.5,
        tta="none",
        allow_panchromatic=True,
        description="Least-squares roof finder, for tests only.",
    )
    return Path(zoo.save_model(model, card, folder))


def write_tiles(folder: Path) -> Path:
    from rasterio.transform import from_origin

    image, _mask = synthetic_buildings(2 * TILE, seed=3)
    for row, col, height, width in CROSSING:
        image[:, row : row + height, col : col + width] = 210
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(2):
        for c in range(2):
            transform = from_origin(ORIGIN[0] + c * TILE * 0.5, ORIGIN[1] - r * TILE * 0.5, 0.5, 0.5)
            write_geotiff(
                folder / f"t_{r}_{c}.tif",
                image[:, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE],
                transform=transform,
            )
    return folder


def crossing_boxes() -> list:
    """The drawn crossing roofs in map coordinates, shrunk by a pixel."""
    return [
        shapely.box(
            ORIGIN[0] + c * 0.5, ORIGIN[1] - (r + h) * 0.5, ORIGIN[0] + (c + w) * 0.5, ORIGIN[1] - r * 0.5
        ).buffer(-0.5)
        for r, c, h, w in CROSSING
    ]


def canonical(geometries) -> list[str]:
    """Comparable outlines; a file gives one-part MultiPolygons where detection gives Polygons."""
    single = [g.geoms[0] if g.geom_type == "MultiPolygon" and len(g.geoms) == 1 else g for g in geometries]
    return sorted(shapely.normalize(g).wkt for g in single)


def read_layer(path: Path):
    from footprint_plugin.core.io.vector_io import read_polygons

    return read_polygons(path)


@pytest.fixture(scope="module")
def job_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    card_path = make_roof_model(folder / "models")
    tiles = write_tiles(folder / "tiles")
    return folder, card_path, tiles


def _options():
    from footprint_plugin.core.engine.inference import InferenceOptions
    from footprint_plugin.core.vectors.polygons import PolygonOptions

    # fp32: "auto" may pick bf16 per block on CPUs with AMX, and the comparison wants one precision.
    return InferenceOptions(device="cpu", precision="fp32"), PolygonOptions(threshold=0.5, min_area_m2=5.0)


def run_serial_job(tiles: Path, out: Path, card_path: Path, on_status=None, on_info=None, **options):
    """run_batch in this process with the test settings (blocks of BLOCK px unless `block_size` is given)."""
    from footprint_plugin.core.batch.runner import BatchOptions, run_batch
    from footprint_plugin.core.zoo.modelcard import load_card

    inference, polygons = _options()
    batch_options = BatchOptions(**{"workers": 0, "block_size": BLOCK, **options})
    card = load_card(card_path)
    return run_batch([tiles], out, card, inference, polygons, batch_options, on_status=on_status, on_info=on_info)


@pytest.fixture(scope="module")
def serial_run(job_data):
    """The serial (in-process) batch, kept as the reference of the other runs."""
    folder, card_path, tiles = job_data
    out = folder / "serial.gpkg"
    return run_serial_job(tiles, out, card_path, probability_dir=folder / "prob"), out


def test_adjacent_tiles_give_the_mosaic_result_and_no_building_is_cut(job_data, serial_run, tmp_path):
    import rasterio
    from osgeo import gdal

    from footprint_plugin.core.engine.pipeline import detect_buildings
    from footprint_plugin.core.zoo.modelcard import load_card

    _folder, card_path, tiles = job_data
    result, out = serial_run
    assert (result.n_tiles, result.n_mosaics, result.blocks_total, result.blocks_failed) == (4, 1, 4, [])
    assert out.exists() and not (out.parent / (out.name + ".job")).exists()  # job folder removed on success
    # Reference: detection on the mosaic as one raster.
    mosaic = tmp_path / "mosaic.vrt"
    gdal.BuildVRT(str(mosaic), sorted(str(p) for p in tiles.glob("*.tif")))
    inference, polygons = _options()
    reference = detect_buildings(mosaic, None, load_card(card_path), tmp_path / "p.tif", inference, polygons)
    assert reference.n_buildings >= len(CROSSING)
    assert canonical(result.geometries) == canonical(reference.geometries)
    with rasterio.open(tmp_path / "p.tif") as a, rasterio.open(result.probability_paths[0]) as b:
        assert b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert np.array_equal(a.read(), b.read())
    # Every roof drawn across a tile edge is one whole polygon that crosses that edge.
    layer = read_layer(out)
    assert len(layer.geometries) == result.n_buildings
    edge_x, edge_y = ORIGIN[0] + TILE * 0.5, ORIGIN[1] - TILE * 0.5
    edges = shapely.MultiLineString(
        [[(edge_x, ORIGIN[1]), (edge_x, ORIGIN[1] - 200)], [(ORIGIN[0], edge_y), (ORIGIN[0] + 200, edge_y)]]
    )
    for roof in crossing_boxes():
        hits = [k for k, g in enumerate(layer.geometries) if g.intersects(roof)]
        assert len(hits) == 1, f"roof {roof.bounds} is split into {len(hits)} polygons"
        building = layer.geometries[hits[0]]
        assert building.crosses(edges) and building.intersection(roof).area > 0.8 * roof.area
    assert {a["tile"] for a in layer.attributes} <= {f"t_{r}_{c}" for r in range(2) for c in range(2)}
    assert all(a["source"] == a["tile"] + ".tif" for a in layer.attributes)


def test_blocks_of_one_process_share_one_prepared_network(job_data, serial_run):
    """The copy and fusing of prepare_model run once per process and device, not once per block."""
    from footprint_plugin.core.batch.model_cache import cached_model, prepared_once

    _folder, card_path, _tiles = job_data
    _card, model = cached_model(card_path)
    prepared = prepared_once(model, "cpu")
    assert prepared is prepared_once(model, "cpu") and prepared is not model
    assert not any(p.requires_grad for p in prepared.parameters()) and model.training is False


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    from footprint_plugin.core.batch.distributed import start_cluster

    handle = start_cluster(workers=2)
    yield handle
    handle.close()


def test_local_cluster_matches_serial_and_survives_a_killed_worker(job_data, serial_run, cluster, tmp_path):
    from footprint_plugin.core.batch.distributed import worker_pids
    from footprint_plugin.core.batch.runner import BatchOptions, run_batch
    from footprint_plugin.core.zoo.modelcard import load_card

    _folder, card_path, tiles = job_data
    reference, _out = serial_run
    inference, polygons = _options()
    client = cluster.client
    assert len(worker_pids(client)) == 2
    first = run_batch(
        [tiles],
        tmp_path / "dask.gpkg",
        load_card(card_path),
        inference,
        polygons,
        BatchOptions(block_size=BLOCK, client=client),
    )
    assert first.engine.startswith("Dask") and first.blocks_failed == []
    assert canonical(first.geometries) == canonical(reference.geometries)

    killed: list[int] = []

    def kill_a_busy_worker(status) -> None:
        if killed or status.blocks_done < 1:
            return
        busy = [address for address, keys in client.processing().items() if keys]
        pids = worker_pids(client)
        if busy:
            killed.append(pids[busy[0]])
            os.kill(pids[busy[0]], signal.SIGKILL)

    second = run_batch(
        [tiles],
        tmp_path / "killed.gpkg",
        load_card(card_path),
        inference,
        polygons,
        BatchOptions(block_size=BLOCK, client=client),
        on_status=kill_a_busy_worker,
    )
    assert killed, "no worker was busy to be killed"
    assert second.blocks_failed == [] and second.blocks_run == 4
    assert canonical(second.geometries) == canonical(reference.geometries)
    assert killed[0] not in worker_pids(client).values()  # the nanny started a fresh worker


def _cli(args: list[str], env_extra: dict | None = None, prelude: str = "") -> list[str]:
    code = f"{prelude}import sys; from footprint_plugin.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "batch", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def test_resume_after_a_kill_skips_finished_blocks(job_data, serial_run, tmp_path):
    _folder, card_path, tiles = job_data
    reference, _out = serial_run
    out = tmp_path / "resumed.gpkg"
    args = [
        str(tiles),
        "--out",
        str(out),
        "--model",
        str(card_path),
        "--workers",
        "0",
        "--block-size",
        str(BLOCK),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--min-area",
        "5",
        "--threshold",
        "0.5",
        "--json",
    ]
    job = out.with_name(out.name + ".job")

    def recorded() -> set[str]:
        """Blocks the job's manifest records as finished (a block file without its line is redone)."""
        manifest = job / "footprint_manifest.jsonl"
        lines = manifest.read_text().splitlines() if manifest.exists() else []
        return {json.loads(line)["block"] for line in lines if line.endswith("}") and '"block"' in line}

    process = subprocess.Popen(
        _cli(args), env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(recorded()) < 2:
        time.sleep(0.05)
    assert process.poll() is None, "the job ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = recorded()
    assert 2 <= len(finished) < 4 and not out.exists()
    assert all((job / "blocks" / f"{block}.tif").exists() for block in finished)

    resumed = subprocess.run(
        _cli(args + ["--resume"]), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["blocks_resumed"] == len(finished) and summary["blocks_run"] == 4 - len(finished)
    assert "Resuming" in resumed.stderr
    assert canonical(read_layer(out).geometries) == canonical(reference.geometries)


def test_a_corrupt_tile_is_reported_and_the_job_completes(job_data, serial_run, tmp_path):
    import shutil

    from rasterio.transform import from_origin

    from footprint_plugin.core.batch.runner import BatchOptions, run_batch
    from footprint_plugin.core.zoo.modelcard import load_card

    _folder, card_path, tiles = job_data
    reference, _out = serial_run
    folder = tmp_path / "tiles"
    shutil.copytree(tiles, folder)
    (folder / "broken.tif").write_bytes(b"II*\x00 this is not really a GeoTIFF")
    # A real GeoTIFF cut short, as a failed download leaves it (far from the others: its own mosaic).
    far = write_geotiff(
        tmp_path / "far.tif",
        synthetic_buildings(256, seed=5)[0],
        transform=from_origin(ORIGIN[0] + 5000, ORIGIN[1], 0.5, 0.5),
    )
    data = far.read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 2])
    inference, polygons = _options()
    # One block of the whole mosaic this time: the same buildings as with 2 x 2 blocks.
    result = run_batch(
        [folder],
        tmp_path / "out.gpkg",
        load_card(card_path),
        inference,
        polygons,
        BatchOptions(workers=0, block_size=2 * TILE),
    )
    assert result.n_tiles == 4 and sorted(s.split(":")[0] for s in result.skipped) == ["broken.tif", "truncated.tif"]
    assert any("Skipped tile: broken.tif" in line for line in result.summary_lines())
    assert canonical(result.geometries) == canonical(reference.geometries)
    assert (tmp_path / "out.gpkg").exists()


def test_without_dask_runs_serially_and_says_how_to_enable_workers(job_data, tmp_path):
    _folder, card_path, tiles = job_data
    out = tmp_path / "nodask.gpkg"
    args = [
        str(tiles),
        "--out",
        str(out),
        "--model",
        str(card_path),
        "--workers",
        "2",
        "--block-size",
        "384",
        "--device",
        "cpu",
        "--min-area",
        "5",
        "--json",
    ]
    hide = "import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None; "
    done = subprocess.run(
        _cli(args, prelude=hide), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["engine"].startswith("serial") and summary["n_buildings"] > 0
    assert "dask[distributed]" in summary["hint"] and "--workers" in summary["hint"]
    assert "Dask is not installed" in done.stderr and "Hint:" in done.stderr
    assert out.exists()


def test_user_errors_say_how_to_fix(job_data, tmp_path):
    from footprint_plugin.core.batch.runner import BatchOptions, run_batch
    from footprint_plugin.core.common.errors import InputError, OutputError
    from footprint_plugin.core.zoo.modelcard import load_card

    _folder, card_path, tiles = job_data
    card = load_card(card_path)
    with pytest.raises(OutputError, match="input"):
        run_batch([tiles], tiles / "t_0_0.tif", card, options=BatchOptions(workers=0))
    with pytest.raises(InputError, match="No files matching"):
        run_batch([tmp_path], tmp_path / "o.gpkg", card, options=BatchOptions(workers=0))
    from footprint_plugin.core.engine.inference import InferenceOptions

    # Refused before any block runs (and before a model loads), not in a worker an hour later.
    with pytest.raises(InputError, match="Batch size"):
        run_batch([tiles], tmp_path / "o.gpkg", card, InferenceOptions(batch_size=0), options=BatchOptions(workers=0))
    with pytest.raises(OutputError, match="not a vector file name"):
        run_batch([tiles], tmp_path / "o.txt", card, options=BatchOptions(workers=0))
    assert not (tmp_path / "o.gpkg").exists() and not (tmp_path / "o.txt").exists()
    not_ours = tmp_path / "busy"
    not_ours.mkdir()
    (not_ours / "precious.txt").write_text("x")
    with pytest.raises(OutputError, match="not a batch job folder"):
        run_batch([tiles], tmp_path / "o.gpkg", card, options=BatchOptions(workers=0, job_dir=not_ours))
    assert (not_ours / "precious.txt").exists()
