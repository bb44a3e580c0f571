"""The probability raster is a valid Cloud Optimized GeoTIFF (issue 12, item 10), pixel for pixel the same."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio
from conftest import synthetic_buildings, write_geotiff

from footprint_plugin.core.engine.inference import InferenceOptions, predict_raster
from footprint_plugin.core.io import raster_io
from footprint_plugin.core.zoo.modelcard import ModelCard


def _validate(path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of GDAL's own COG validator (osgeo_utils, from python3-gdal)."""
    validator = pytest.importorskip(
        "osgeo_utils.samples.validate_cloud_optimized_geotiff",
        reason="GDAL's COG validator (python3-gdal) is not installed",
    )
    warnings, errors, _details = validator.validate(str(path), full_check=True)
    return errors, warnings


@pytest.fixture
def probability(tmp_path):
    import torch

    class Bright(torch.nn.Module):
        def forward(self, x):
            return torch.cat([(x.mean(dim=1, keepdim=True) - 0.5) * 8.0] * 3, 1)

    card = ModelCard(
        name="cog_test",
        architecture="unet_mobilenetv2",
        in_channels=3,
        out_channels=3,
        band_roles=["red", "green", "blue"],
        heads=["footprint", "boundary", "contact"],
        tile_size=256,
        overlap=32,
        scaling={"method": "divide", "value": 255.0},
    )
    image = synthetic_buildings(1100, seed=6)[0][:, :700, :]
    raster = write_geotiff(tmp_path / "in.tif", image)
    result = predict_raster(
        raster, card, tmp_path / "probability.tif", InferenceOptions(precision="fp32"), model=Bright()
    )
    return result.probability_path


def test_probability_raster_passes_gdal_cog_validation(probability):
    errors, _warnings = _validate(probability)
    assert errors == []
    with rasterio.open(probability) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.block_shapes[0] == (256, 256) and ds.overviews(1)[:2] == [2, 4]
        assert ds.descriptions == ("footprint", "boundary", "contact")
        assert ds.tags()[raster_io.HEADS_TAG] == "footprint,boundary,contact"
        assert ds.scales[0] == pytest.approx(1 / 254) and ds.nodata == 255


def test_gdalinfo_sees_the_full_resolution_image_first(probability):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from osgeo import gdal; import sys; " "print(gdal.Info(sys.argv[1]))",
            str(probability),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"osgeo.gdal is not importable here: {done.stderr.strip()[-200:]}")
    assert "LAYOUT=COG" in done.stdout


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_cog_pixels_equal_what_was_streamed(tmp_path, dtype):
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    prob = rng.random((2, 600, 520), dtype=np.float32)
    valid = rng.random((600, 520)) > 0.05
    writer = raster_io.ProbabilityWriter(
        tmp_path / "p.tif",
        520,
        600,
        ["footprint", "contact"],
        "EPSG:32631",
        from_origin(600000, 5750000, 0.5, 0.5),
        dtype,
    )
    writer.write_rows(prob[:, :300, :256], valid[:300, :256], (0, 256))
    writer.write_rows(prob[:, :, 256:], valid[:, 256:], (256, 520))
    writer.write_rows(prob[:, 300:, :256], valid[300:, :256], (0, 256))
    writer.commit()
    back, back_valid, _ = raster_io.read_probability(tmp_path / "p.tif")
    expected = writer.encode(prob, valid)
    with rasterio.open(tmp_path / "p.tif") as ds:
        stored = ds.read()
    assert np.array_equal(back_valid, valid)
    assert np.array_equal(stored, expected, equal_nan=True)
    assert _validate(tmp_path / "p.tif")[0] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif"]
