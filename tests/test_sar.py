"""SAR inference on the real Capella (SpaceNet 6) and Sentinel-1 crops: dB/linear input,
quad-pol and dual-pol, NaN nodata, complex SLC, rotated geotransforms, look-direction flip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from footprint_plugin.core.engine.inference import InferenceOptions, predict_raster
from footprint_plugin.core.engine.scaling import apply_scaling, compute_scaling_stats
from footprint_plugin.core.io.raster_io import read_probability
from footprint_plugin.core.models import create_model
from footprint_plugin.core.zoo.modelcard import ModelCard

pytestmark = pytest.mark.shared
torch.set_num_threads(1)
OPTIONS = InferenceOptions(precision="fp32", output_dtype="float32")


def sar_card(bands: list[str], gsd_m: float, **scaling) -> ModelCard:
    return ModelCard(
        name="sar_test",
        architecture="unet_mobilenetv2",
        in_channels=len(bands),
        out_channels=1,
        band_roles=bands,
        sensor="SAR",
        scaling={"method": "db", "input_units": "db", **scaling},
        gsd_m=gsd_m,
        tile_size=128,
        overlap=32,
        tta="lr",
    )


def sar_model(card: ModelCard) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(card.architecture, card.in_channels, card.out_channels).eval()


@pytest.fixture(scope="module")
def capella(shared_data) -> Path:
    return shared_data / "sar" / "rotterdam_capella"


def assert_same_grid(a: Path, b: Path) -> None:
    with rasterio.open(a) as src, rasterio.open(b) as out:
        assert (out.width, out.height) == (src.width, src.height)
        assert out.crs == src.crs
        assert out.transform.almost_equals(src.transform)


@pytest.mark.parametrize("gsd_m", [4.5, 2.25])  # native, and resampled x2 for the model
def test_quad_pol_db_with_nan_nodata(capella, tmp_path, gsd_m):
    path = capella / "sar_masked.tif"
    card = sar_card(["HH", "HV", "VH", "VV"], gsd_m)
    result = predict_raster(
        path, card, tmp_path / "p.tif", InferenceOptions(precision="fp32", tta=True), model=sar_model(card)
    )
    assert result.resampled == (gsd_m != 4.5)
    assert_same_grid(path, result.probability_path)
    with rasterio.open(path) as ds:
        nan = np.isnan(ds.read()).any(axis=0)
    assert 0.3 < nan.mean() < 0.5  # the README says 39 % NaN
    prob, valid, _ = read_probability(result.probability_path)
    assert np.array_equal(valid, ~nan)  # NaN areas stay nodata, everything else is predicted
    assert (prob[:, nan] == 0).all()


def test_linear_units_match_db_units(capella, tmp_path):
    src = capella / "sar_masked.tif"
    with rasterio.open(src) as ds:
        profile = ds.profile
        linear = (10.0 ** (ds.read() / 10.0)).astype(np.float32)
    linear_path = tmp_path / "linear.tif"
    with rasterio.open(linear_path, "w", **profile) as dst:
        dst.write(linear)
    db_card = sar_card(["HH", "HV", "VH", "VV"], 4.5, clip_db=[-20, 25])
    linear_card = sar_card(["HH", "HV", "VH", "VV"], 4.5, clip_db=[-20, 25], input_units="linear")
    model = sar_model(db_card)
    a = predict_raster(src, db_card, tmp_path / "a.tif", OPTIONS, model=model)
    b = predict_raster(linear_path, linear_card, tmp_path / "b.tif", OPTIONS, model=model)
    prob_a, valid_a, _ = read_probability(a.probability_path)
    prob_b, valid_b, _ = read_probability(b.probability_path)
    assert np.array_equal(valid_a, valid_b)
    assert np.abs(prob_a - prob_b).max() < 1e-3


def test_db_scaling_clips_to_the_card_range(capella):
    card = sar_card(["HH", "HV", "VH", "VV"], 4.5, clip_db=[-20, 10])
    stats = compute_scaling_stats(capella / "sar_masked.tif", card)
    assert stats.low == [-20.0] * 4 and stats.high == [10.0] * 4
    raw = np.array([[[-30.0, -5.0, 40.0, np.nan]]] * 4, np.float32)
    scaled = apply_scaling(raw, np.array([[True, True, True, False]]), stats, card)
    assert np.allclose(scaled[0, 0], [0.0, 0.5, 1.0, 0.0])


def test_dual_pol_sentinel1_vrt(shared_data, tmp_path):
    from osgeo import gdal

    folder = shared_data / "sar" / "sentinel1_vv_vh"
    vrt = tmp_path / "vv_vh.vrt"
    gdal.BuildVRT(str(vrt), [str(folder / "VV.tif"), str(folder / "VH.tif")], separate=True, srcNodata=0, VRTNodata=0)
    card = sar_card(["VV", "VH"], 10.0)
    result = predict_raster(vrt, card, tmp_path / "p.tif", OPTIONS, model=sar_model(card))
    assert_same_grid(vrt, result.probability_path)
    with rasterio.open(vrt) as ds:
        nodata = (ds.read() == 0).any(axis=0)
    _, valid, _ = read_probability(result.probability_path)
    assert np.array_equal(valid, ~nodata)


def test_complex_slc_on_a_rotated_grid(capella, tmp_path):
    path = capella / "sar_hh.tif"
    card = sar_card(["HH"], 2.5, input_units="linear")
    result = predict_raster(path, card, tmp_path / "p.tif", OPTIONS, model=sar_model(card))
    assert result.stats["complex_input"]
    assert_same_grid(path, result.probability_path)
    with rasterio.open(path) as ds:
        assert ds.transform.b != 0 or ds.transform.d != 0  # really rotated
    assert result.gsd_m == pytest.approx(2.5, rel=0.02)
    prob, valid, _ = read_probability(result.probability_path)
    assert valid.all() and np.isfinite(prob).all()


def test_look_direction_flip_keeps_the_grid_and_nodata(capella, tmp_path):
    path = capella / "sar_masked.tif"
    card = sar_card(["HH", "HV", "VH", "VV"], 4.5)
    options = InferenceOptions(precision="fp32", output_dtype="float32", look_direction_flip=True)
    flipped = predict_raster(path, card, tmp_path / "f.tif", options, model=sar_model(card))
    plain = predict_raster(path, card, tmp_path / "p.tif", OPTIONS, model=sar_model(card))
    assert_same_grid(path, flipped.probability_path)
    prob_f, valid_f, _ = read_probability(flipped.probability_path)
    prob_p, valid_p, _ = read_probability(plain.probability_path)
    assert np.array_equal(valid_f, valid_p)
    assert np.abs(prob_f - prob_p).max() > 1e-4  # the network really saw rotated tiles
