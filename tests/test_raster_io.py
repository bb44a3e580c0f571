"""Raster I/O: opening errors, GSD in ground metres, validity masks, streamed atomic writing."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest import synthetic_buildings
from rasterio.transform import from_origin
from rasterio.windows import Window

from footprint_plugin.core.common.errors import InputError, ModelError, OutputError
from footprint_plugin.core.engine.scaling import apply_scaling, compute_scaling_stats, resolve_bands
from footprint_plugin.core.io import raster_io
from footprint_plugin.core.zoo.modelcard import ModelCard


def test_open_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        raster_io.open_raster(tmp_path / "missing.tif")
    with pytest.raises(InputError, match="folder"):
        raster_io.open_raster(tmp_path)
    (tmp_path / "text.tif").write_text("hello")
    with pytest.raises(InputError, match="corrupt"):
        raster_io.open_raster(tmp_path / "text.tif")


@pytest.mark.parametrize(
    "crs,transform,expected",
    [
        ("EPSG:32631", from_origin(600000, 5750000, 0.5, 0.5), 0.5),
        ("EPSG:4326", from_origin(10.0, 60.0005, 9e-6, 4.5e-6), 0.5),  # 60 N: a degree of longitude is half as long
        # Web Mercator "metres" at 60 N are half a ground metre.
        ("EPSG:3857", from_origin(1113194.9, 8399737.9, 1.0, 1.0), 0.5),
    ],
)
def test_gsd_in_ground_metres(make_geotiff, crs, transform, expected):
    path = make_geotiff(np.zeros((1, 10, 10), np.uint8), crs=crs, transform=transform)
    with rasterio.open(path) as ds:
        assert raster_io.raster_gsd_m(ds) == pytest.approx(expected, rel=0.01)


def test_no_crs_has_no_gsd(make_geotiff):
    info = raster_io.describe_raster(make_geotiff(np.zeros((2, 10, 12), np.uint8), crs=None))
    assert info.gsd_m is None and info.crs_wkt is None and (info.width, info.height, info.count) == (12, 10, 2)


def test_read_block_validity_from_nodata_nan_and_window(make_geotiff):
    data = np.arange(2 * 20 * 30, dtype=np.float32).reshape(2, 20, 30)
    data[0, 5, 5] = -9999
    data[1, 6, 6] = np.nan
    path = make_geotiff(data, nodata=-9999)
    with rasterio.open(path) as ds:
        raw, valid = raster_io.read_block(ds, [1, 2])
        assert raw.shape == (2, 20, 30) and valid.sum() == 20 * 30 - 2
        assert not valid[5, 5] and not valid[6, 6]
        raw, valid = raster_io.read_block(ds, [2], window=Window(4, 5, 10, 3))
        assert raw.shape == (1, 3, 10) and not valid[1, 2] and valid.sum() == 29


def test_read_block_resampled_uses_masks(make_geotiff):
    data = np.full((1, 40, 40), 7, np.uint16)
    data[:, :, :20] = 0
    path = make_geotiff(data, nodata=0)
    with rasterio.open(path) as ds:
        from rasterio.enums import Resampling

        _, valid = raster_io.read_block(ds, [1], out_shape=(20, 20), resampling=Resampling.bilinear)
    assert not valid[:, :9].any() and valid[:, 11:].all()


def test_check_output_writable(tmp_path):
    assert raster_io.check_output_writable(tmp_path / "x.tif") == tmp_path / "x.tif"
    with pytest.raises(OutputError, match="does not exist"):
        raster_io.check_output_writable(tmp_path / "no" / "x.tif")
    with pytest.raises(OutputError, match="folder"):
        raster_io.check_output_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


@pytest.mark.parametrize("chunks", [[1000], [7, 300, 1, 692], [256, 256, 256, 232]])
def test_probability_writer_streams_any_chunking(tmp_path, chunks):
    width, height = 300, sum(chunks)
    rng = np.random.default_rng(0)
    prob = rng.random((2, height, width), dtype=np.float32)
    valid = rng.random((height, width)) > 0.1
    writer = raster_io.ProbabilityWriter(
        tmp_path / "p.tif", width, height, ["footprint", "contact"], "EPSG:32631", from_origin(600000, 5750000, 1, 1)
    )
    row = 0
    for n in chunks:
        writer.write_rows(prob[:, row : row + n], valid[row : row + n])
        row += n
    assert not (tmp_path / "p.tif").exists()  # nothing at the output path until commit
    writer.commit()
    back, back_valid, heads = raster_io.read_probability(tmp_path / "p.tif")
    assert heads == ["footprint", "contact"]
    assert np.array_equal(back_valid, valid)
    assert np.abs(back - prob * valid).max() <= 0.5 / 254 + 1e-6
    assert [p.name for p in tmp_path.iterdir()] == ["p.tif"]


def test_probability_writer_abort_removes_the_temporary_file(tmp_path):
    writer = raster_io.ProbabilityWriter(
        tmp_path / "p.tif", 10, 10, ["footprint"], None, from_origin(600000, 5750000, 1, 1)
    )
    writer.write_rows(np.zeros((1, 5, 10), np.float32), np.ones((5, 10), bool))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Scaling


def card_with(scaling, in_channels=3, allow_panchromatic=False) -> ModelCard:
    return ModelCard(
        name="c",
        architecture="unet_mobilenetv2",
        in_channels=in_channels,
        out_channels=1,
        band_roles=["b"] * in_channels,
        scaling=scaling,
        allow_panchromatic=allow_panchromatic,
    )


def test_percentile_stats_come_from_the_whole_raster_and_ignore_nodata(make_geotiff):
    image = np.tile(np.arange(2000, dtype=np.uint16), (3, 2000, 1))  # columns 0..1999
    image[:, :, :100] = 0  # nodata
    path = make_geotiff(image, nodata=0)
    card = card_with({"method": "percentile", "low": 0, "high": 100})
    stats = compute_scaling_stats(path, card)
    assert stats.band_indexes == [1, 2, 3]
    assert stats.low[0] == pytest.approx(100, abs=3) and stats.high[0] == pytest.approx(1999, abs=3)
    tile = image[:, :4, 1000:1004]
    scaled = apply_scaling(tile, np.ones((4, 4), bool), stats, card)
    assert scaled.dtype == np.float32 and scaled.shape == (3, 4, 4)
    assert scaled[0, 0, 0] == pytest.approx((1000 - stats.low[0]) / (stats.high[0] - stats.low[0]), abs=1e-5)


def test_divide_then_meanstd_and_invalid_pixels_are_zero():
    card = card_with({"method": "divide", "value": 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    from footprint_plugin.core.engine.scaling import ScalingStats

    stats = ScalingStats("divide", [1, 2, 3], 3)
    raw = np.full((3, 2, 2), 255, np.uint8)
    valid = np.array([[True, False], [True, True]])
    scaled = apply_scaling(raw, valid, stats, card)
    assert scaled[0, 0, 0] == pytest.approx(2.0) and scaled[0, 0, 1] == 0.0


def test_band_resolution_and_panchromatic():
    assert resolve_bands(4, card_with({"method": "percentile"}), alpha_band=4) == ([1, 2, 3], 3)
    assert resolve_bands(1, card_with({"method": "percentile"}, allow_panchromatic=True)) == ([1], 3)
    with pytest.raises(ModelError, match="1 band.*3 bands"):
        resolve_bands(1, card_with({"method": "percentile"}))
    with pytest.raises(ModelError, match="5 bands.*3 bands"):
        resolve_bands(5, card_with({"method": "percentile"}))


def test_panchromatic_is_replicated_before_per_channel_meanstd(make_geotiff):
    pan = synthetic_buildings(64, bands=1)[0].astype(np.uint16)
    card = card_with(
        {"method": "percentile", "low": 0, "high": 100, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]},
        allow_panchromatic=True,
    )
    stats = compute_scaling_stats(make_geotiff(pan), card)
    scaled = apply_scaling(pan, np.ones(pan.shape[1:], bool), stats, card)
    assert scaled.shape == (3, 64, 64)
    assert np.allclose(scaled[0] - scaled[1], 0.1) and np.allclose(scaled[1] - scaled[2], 0.1)


def test_reads_never_write_beside_or_inside_inputs(tmp_path, monkeypatch):
    """Statistics and metadata reads write no .aux.xml (GDAL's PAM is off): a /vsizip/ input keeps its sha256."""
    monkeypatch.setenv("GDAL_PAM_ENABLED", "YES")  # as on a user's machine (the suite turns it off for QGIS)
    import hashlib
    import zipfile

    path = tmp_path / "in.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(600000, 5750000, 0.5, 0.5),
    ) as dst:
        dst.write(synthetic_buildings(64)[0][:1])
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(path, "in.tif")
    before = hashlib.sha256(archive.read_bytes()).hexdigest()
    for name in (str(path), f"/vsizip/{archive}/in.tif"):
        with raster_io.opened(name) as dataset:
            dataset.stats(indexes=[1], approx=False)  # with PAM on, GDAL saves these in <raster>.aux.xml
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "in.zip"]
    with zipfile.ZipFile(archive) as handle:
        assert handle.namelist() == ["in.tif"]


def test_vrt_with_a_missing_source_names_the_missing_file(tmp_path):
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        '<SourceFilename relativeToVRT="1">tiles/gone.tif</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    with pytest.raises(InputError, match=r"tiles/gone\.tif.*rebuild the VRT"):
        raster_io.open_raster(vrt)
