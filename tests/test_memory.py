"""Memory is bounded by the tile size, not the raster's width (issue 11): column windows, exact seams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, synthetic_buildings, write_geotiff
from rasterio.transform import from_origin

from footprint_plugin.core.engine import estimate, planning
from footprint_plugin.core.engine.inference import InferenceOptions, InferenceResult, predict_raster
from footprint_plugin.core.engine.tiling import TileGrid
from footprint_plugin.core.io.raster_io import read_probability
from footprint_plugin.core.zoo.modelcard import ModelCard

PEAK_RSS_LIMIT_MB = 1536


def test_a_300000_px_wide_raster_runs_within_1_5_gb(tmp_path):
    """The whole pipeline on a 300 000 x 512 VRT (one repeated tile), peak RSS measured in a fresh process.

    Before column windows, one full-width strip of tile height (and its accumulator) grew with the
    width: by arithmetic over 1 GB for those two buffers alone here; 8.9 GB was measured at 500 000 px.
    A pointwise network keeps this under a minute unloaded. The script starts the measured run from a
    small stdlib-only process, because Linux carries a parent's peak RSS into an exec'd child (pytest
    itself is several GB late in the suite).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    script = REPO_ROOT / "scripts" / "bench_memory.py"
    done = subprocess.run(
        [sys.executable, str(script), "--one", "300000", "--height", "512", "--folder", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["megapixels"] == pytest.approx(153.6)
    assert figures["buildings"] > 1000  # every stage ran, through to the GeoPackage
    assert figures["peak_rss_mb"] < PEAK_RSS_LIMIT_MB, figures
    if figures.get("vm_hwm_mb") is not None:  # Linux: the kernel's own high-water mark of the run's process
        assert figures["vm_hwm_mb"] < PEAK_RSS_LIMIT_MB, figures
    assert (tmp_path / "probability.tif").exists() and (tmp_path / "buildings.gpkg").exists()


class Pointwise(torch.nn.Module):
    """Deterministic per pixel (so batch composition cannot matter) but different per head and with
    a horizontal shift, so a wrong seam offset would show."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = (x.mean(dim=1, keepdim=True) - 0.5) * 4.0
        return torch.cat([base, torch.roll(x[:, :1], 3, -1) * 2 - 1, -base], 1)


def _card(**changes) -> ModelCard:
    values = dict(
        name="window_test",
        architecture="unet_mobilenetv2",
        in_channels=3,
        out_channels=3,
        band_roles=["red", "green", "blue"],
        heads=["footprint", "boundary", "contact"],
        tile_size=128,
        overlap=32,
        scaling={"method": "divide", "value": 255.0},
        tta="d4",
    )
    values.update(changes)
    return ModelCard(**values)


@pytest.mark.parametrize("gsd", [0.5, 0.25, 1.1], ids=["same_gsd", "downsampled", "upsampled"])
def test_column_windows_give_exactly_the_strip_output(tmp_path, monkeypatch, gsd):
    image = synthetic_buildings(700, seed=1)[0][:, :300, :]
    raster = write_geotiff(tmp_path / "in.tif", image, transform=from_origin(600000, 5750000, gsd, gsd))
    card, options = _card(), InferenceOptions(precision="fp32", tta=True)
    strip = predict_raster(raster, card, tmp_path / "strip.tif", options, model=Pointwise())
    monkeypatch.setattr(planning, "MAX_WINDOW_WIDTH", 256)
    windows = planning.column_windows(
        planning.GridPlan(700, 300, strip.width, strip.height, gsd, False, []),
        TileGrid.for_raster(700, 300, 128, 32),
    )
    assert len(windows) == 3
    windowed = predict_raster(raster, card, tmp_path / "windowed.tif", options, model=Pointwise())
    a, valid_a, _ = read_probability(tmp_path / "strip.tif")
    b, valid_b, _ = read_probability(tmp_path / "windowed.tif")
    assert np.array_equal(valid_a, valid_b)
    assert np.array_equal(a, b)
    assert windowed.resampled == (gsd != 0.5)


def test_column_windows_with_a_real_network_match_in_float32(tmp_path, monkeypatch):
    from footprint_plugin.core.models import create_model

    torch.manual_seed(0)
    card = _card(out_channels=1, heads=["footprint"])
    model = create_model("unet_mobilenetv2", 3, 1).eval()
    raster = write_geotiff(tmp_path / "in.tif", synthetic_buildings(600, seed=2)[0][:, :160, :])
    options = InferenceOptions(precision="fp32", output_dtype="float32", batch_size=2)
    predict_raster(raster, card, tmp_path / "strip.tif", options, model=model)
    monkeypatch.setattr(planning, "MAX_WINDOW_WIDTH", 256)
    predict_raster(raster, card, tmp_path / "windowed.tif", options, model=model)
    a, _, _ = read_probability(tmp_path / "strip.tif")
    b, _, _ = read_probability(tmp_path / "windowed.tif")
    assert np.abs(a - b).max() < 1e-5


def test_window_geometry_is_block_aligned_and_covers_every_column():
    grid = TileGrid.for_raster(5000, 600, 512, 64)
    plan = planning.GridPlan(5000, 600, 5000, 600, 0.5, False, [])
    windows = planning.column_windows(plan, grid, max_width=1024)
    assert windows[0].first == 0 and windows[-1].stop == 5000
    for left, right in zip(windows, windows[1:]):
        assert left.stop == right.first and left.stop % 256 == 0
    for window in windows:
        assert window.stop - window.first <= 1024
        assert window.tiles_first <= window.model_first and window.tiles_stop >= window.model_stop


def test_job_estimate_says_size_time_and_disk(tmp_path):
    raster = write_geotiff(tmp_path / "in.tif", synthetic_buildings(300)[0])
    job = estimate.estimate_job(raster, _card(), InferenceOptions(tta=True), tmp_path / "p.tif")
    assert job.passes == 8 and job.tiles == 9
    assert job.megapixels == pytest.approx(0.09)
    assert job.seconds > 0 and job.disk_bytes > 0
    text = job.describe()
    assert "MP" in text and "GB" in text and "tiles" in text
    assert estimate.check_disk(job, tmp_path / "p.tif") is None
    job.free_bytes = 10
    with pytest.raises(Exception, match="Not enough disk space"):
        estimate.check_disk(job, tmp_path / "p.tif")


def test_speed_is_remembered_for_the_next_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv(estimate.SPEED_CACHE_ENV, str(tmp_path))
    card = _card()
    assert estimate.measured_speed(card, "cpu", 128) is None
    result = InferenceResult(
        Path("p.tif"), ["footprint"], "cpu", "CPU", "", "fp32", 2000, 1000, 2.0, 4.0, False, [], None, 0.5
    )
    estimate.remember_speed(card, result, passes=1, tile=128)
    assert estimate.measured_speed(card, "cpu", 128) == pytest.approx(0.5)
