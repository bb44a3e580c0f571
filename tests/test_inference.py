"""Tiled inference: seamless blending, output format, nodata, GSD, TTA, bad input, cancel."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import synthetic_buildings, write_geotiff
from rasterio.transform import from_origin

from footprint_plugin.core.common.errors import CanceledError, InputError, ModelError, OutputError
from footprint_plugin.core.engine.device import describe_devices, select_device
from footprint_plugin.core.engine.inference import InferenceOptions, predict_raster
from footprint_plugin.core.engine.scaling import apply_scaling, compute_scaling_stats
from footprint_plugin.core.engine.tiling import blend_ramp, tile_starts, weight_sums
from footprint_plugin.core.io.raster_io import HEADS_TAG, read_probability
from footprint_plugin.core.models import create_model
from footprint_plugin.core.zoo import weights as zoo
from footprint_plugin.core.zoo.modelcard import ModelCard

torch.set_num_threads(1)  # other processes share the 2 cores; oversubscribed OpenMP is very slow
FP32 = InferenceOptions(precision="fp32")


def make_card(**kwargs) -> ModelCard:
    values = dict(
        name="test_model",
        architecture="unet_mobilenetv2",
        in_channels=3,
        out_channels=1,
        band_roles=["red", "green", "blue"],
        tile_size=256,
        overlap=64,
        gsd_m=0.5,
        tta="d4",
    )
    values.update(kwargs)
    if "heads" not in kwargs and values["out_channels"] == 3:
        values["heads"] = ["footprint", "boundary", "contact"]
    return ModelCard(**values)


def make_model(card: ModelCard, seed: int = 0) -> torch.nn.Module:
    """A random-weight network with non-trivial eval-mode BatchNorm statistics."""
    torch.manual_seed(seed)
    model = create_model(card.architecture, card.in_channels, card.out_channels)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def image_640():
    return synthetic_buildings(640, seed=3)[0]


# ---------------------------------------------------------------------------------------------
# Tiling arithmetic


def test_tile_starts_cover_the_raster_and_end_flush():
    assert tile_starts(100, 256, 64) == [0]
    assert tile_starts(256, 256, 64) == [0]
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))


def test_blend_weights_never_vanish():
    ramp = blend_ramp(256, 64)
    assert ramp.min() > 0 and ramp[128] == 1.0 and ramp[0] < 0.01
    sums = weight_sums(1000, tile_starts(1000, 256, 64), ramp)
    assert sums.min() > 0


# ---------------------------------------------------------------------------------------------
# Seamless blending


def whole_image_probability(model, path: Path, card: ModelCard) -> np.ndarray:
    stats = compute_scaling_stats(path, card)
    with rasterio.open(path) as ds:
        raw = ds.read()
    x = apply_scaling(raw, np.ones(raw.shape[1:], bool), stats, card)
    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(x)[None])).numpy()[0]


@pytest.mark.parametrize("architecture", ["unet_mobilenetv2", "unet_vgg11"])
def test_tiled_prediction_equals_whole_image_prediction(make_geotiff, tmp_path, image_640, architecture):
    card = make_card(architecture=architecture)
    model = make_model(card)
    path = make_geotiff(image_640)
    options = InferenceOptions(precision="fp32", output_dtype="float32")
    result = predict_raster(path, card, tmp_path / "tiled.tif", options, model=model)
    assert result.tiles == 9  # 640 px with 256 px tiles: 3 x 3, so blending is really exercised
    tiled, valid, _ = read_probability(result.probability_path)
    whole = whole_image_probability(model, path, card)
    assert valid.all()
    interior = np.s_[:, 16:-16, 16:-16]
    assert np.abs(tiled - whole)[interior].max() < 1e-3
    assert whole.std() > 1e-3  # the comparison is not between two constants

    # Without overlap the same comparison fails: the blend is what makes it seamless.
    no_overlap = predict_raster(
        path,
        card,
        tmp_path / "no_overlap.tif",
        InferenceOptions(precision="fp32", output_dtype="float32", overlap=0),
        model=model,
    )
    hard, _, _ = read_probability(no_overlap.probability_path)
    assert np.abs(hard - whole)[interior].max() > 1e-3


def test_given_scaling_stats_and_prepared_network_are_used_as_given(make_geotiff, tmp_path):
    """Batch blocks pass the mosaic's statistics and a network prepared once (core/batch/runner.py)."""
    import dataclasses

    from footprint_plugin.core.engine.inference import prepare_model

    card = make_card()  # no weights file: loading the card's network would raise
    model = make_model(card)
    image = synthetic_buildings(96, seed=5)[0]
    path = make_geotiff(image)
    stats = compute_scaling_stats(make_geotiff(image // 2 + 40, name="other.tif"), card)
    given = stats.to_dict()
    options = InferenceOptions(precision="fp32", output_dtype="float32")
    reference = predict_raster(path, card, tmp_path / "a.tif", options, model=model, scaling_stats=stats)
    assert reference.stats == given != compute_scaling_stats(path, card).to_dict()
    prepared = prepare_model(model, select_device("cpu"))
    result = predict_raster(path, card, tmp_path / "b.tif", options, scaling_stats=stats, prepared_model=prepared)
    assert stats.to_dict() == given  # the caller's statistics are not changed
    assert np.array_equal(read_probability(result.probability_path)[0], read_probability(reference.probability_path)[0])
    one_band = dataclasses.replace(stats, band_indexes=[1], low=[0.0], high=[1.0], replicate_to=1)
    with pytest.raises(InputError, match="scaling statistics are for 1 bands"):
        predict_raster(path, card, tmp_path / "c.tif", options, scaling_stats=one_band, prepared_model=prepared)
    assert not (tmp_path / "c.tif").exists()


def test_training_validation_predicts_like_detect(make_geotiff, tmp_path, image_640):
    """Validation during training must score what Detect buildings produces: same tiles, padding and blend."""
    from footprint_plugin.core.learning.training import predict_array

    card = make_card()
    model = make_model(card)
    for name, image in (("big", image_640), ("small", image_640[:, :200, :150])):  # tiled, and under one tile
        path = make_geotiff(image)
        result = predict_raster(
            path,
            card,
            tmp_path / f"{name}.tif",
            InferenceOptions(precision="fp32", output_dtype="float32"),
            model=model,
        )
        detected, _, _ = read_probability(result.probability_path)
        stats = compute_scaling_stats(path, card)
        with rasterio.open(path) as dataset:
            scaled = apply_scaling(dataset.read(), None, stats, card)
        validated = predict_array(model, scaled, torch.device("cpu"), card.tile_size, card.overlap)
        assert validated.shape == detected.shape
        assert np.abs(validated - detected).max() < 1e-3, name  # borders included


def test_caller_model_is_left_untouched(make_geotiff, tmp_path):
    card = make_card()
    model = create_model(card.architecture, 3, 1)  # train mode, as during training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predict_raster(make_geotiff(synthetic_buildings(96)[0]), card, tmp_path / "p.tif", FP32, model=model)
    assert model.training
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------------
# Output format


def test_output_format_uint8(make_geotiff, tmp_path):
    card = make_card(out_channels=3)
    image = synthetic_buildings(600, seed=1)[0]
    path = make_geotiff(image)
    progress: list[float] = []
    result = predict_raster(path, card, tmp_path / "prob.tif", FP32, model=make_model(card), progress=progress.append)
    assert progress and progress[-1] == 1.0 and progress == sorted(progress)
    with rasterio.open(path) as src, rasterio.open(result.probability_path) as out:
        assert (out.width, out.height, out.count) == (src.width, src.height, 3)
        assert out.crs == src.crs and out.transform == src.transform
        assert out.dtypes == ("uint8",) * 3 and out.nodata == 255
        assert out.descriptions == ("footprint", "boundary", "contact")
        assert out.tags()[HEADS_TAG] == "footprint,boundary,contact"
        assert out.scales[0] == pytest.approx(1 / 254) and out.offsets[0] == 0
        assert out.block_shapes[0] == (256, 256)
        assert out.profile["compress"].lower() == "deflate"
        assert out.overviews(1)
        data = out.read()
    assert data.max() <= 254  # all valid, values 0..254
    assert result.heads == ["footprint", "boundary", "contact"]
    assert (result.width, result.height) == (600, 600)
    assert result.megapixels == pytest.approx(0.36)
    assert result.gsd_m == pytest.approx(0.5, rel=0.01)
    assert not result.resampled and result.device == "cpu"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prob.tif", "raster.tif"]  # no temporary files left


def test_float32_output_uses_nan_nodata(make_geotiff, tmp_path):
    image = synthetic_buildings(128)[0].astype(np.float32)
    image[:, :20, :] = np.nan
    card = make_card()
    out = predict_raster(
        make_geotiff(image),
        card,
        tmp_path / "f.tif",
        InferenceOptions(precision="fp32", output_dtype="float32"),
        model=make_model(card),
    ).probability_path
    with rasterio.open(out) as ds:
        data = ds.read(1)
        assert ds.dtypes[0] == "float32" and math.isnan(ds.nodata)
    assert np.isnan(data[:20]).all() and np.isfinite(data[20:]).all()
    assert 0 <= np.nanmin(data) and np.nanmax(data) <= 1


# ---------------------------------------------------------------------------------------------
# Nodata, masks, CRS, GSD


def test_nodata_and_masks_become_output_nodata(make_geotiff, tmp_path):
    image = synthetic_buildings(300)[0]
    image[:, 100:150, :] = 0
    path = make_geotiff(image, nodata=0)
    card = make_card()
    prob, valid, _ = read_probability(
        predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card)).probability_path
    )
    assert not valid[100:150].any() and valid[:100].all() and valid[150:].all()
    assert (prob[:, 100:150] == 0).all()


def test_internal_mask_becomes_output_nodata(tmp_path):
    image = synthetic_buildings(300)[0]
    path = tmp_path / "masked.tif"
    profile = dict(
        driver="GTiff",
        width=300,
        height=300,
        count=3,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(600000, 5750000, 0.5, 0.5),
    )
    mask = np.full((300, 300), 255, np.uint8)
    mask[:, 200:] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
        dst.write_mask(mask)
    card = make_card()
    _, valid, _ = read_probability(
        predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card)).probability_path
    )
    assert valid[:, :200].all() and not valid[:, 200:].any()


def test_all_nodata_raster_gives_an_empty_result(make_geotiff, tmp_path):
    path = make_geotiff(np.zeros((3, 300, 300), np.uint8), nodata=0)
    card = make_card()
    result = predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card))
    _, valid, _ = read_probability(result.probability_path)
    assert not valid.any()
    assert result.tiles_skipped == result.tiles
    assert any("no valid pixels" in w for w in result.warnings)


def test_raster_smaller_than_a_tile(make_geotiff, tmp_path):
    path = make_geotiff(synthetic_buildings(100)[0][:, :70, :])
    card = make_card(tile_size=512)
    result = predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card))
    prob, valid, _ = read_probability(result.probability_path)
    assert prob.shape == (1, 70, 100) and valid.all()


def test_no_crs_is_allowed_with_a_warning(make_geotiff, tmp_path):
    path = make_geotiff(synthetic_buildings(128)[0], crs=None)
    card = make_card()
    result = predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card))
    assert result.crs_wkt is None and not result.resampled
    assert any("no coordinate reference system" in w for w in result.warnings)
    with rasterio.open(result.probability_path) as ds:
        assert ds.crs is None and (ds.width, ds.height) == (128, 128)


def test_geographic_crs_gsd_in_metres(make_geotiff, tmp_path):
    # 4.5e-6 degrees at the equator is 0.50 m.
    path = make_geotiff(
        synthetic_buildings(128)[0], crs="EPSG:4326", transform=from_origin(10.0, 0.0003, 4.5e-6, 4.5e-6)
    )
    card = make_card()
    result = predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card))
    assert result.gsd_m == pytest.approx(0.50, rel=0.01)
    assert not result.resampled


def test_far_gsd_is_resampled_onto_the_input_grid(make_geotiff, tmp_path):
    # 0.15 m pixels for a 0.5 m model: the model sees ~1/3 of the pixels, output stays on the input grid.
    image = synthetic_buildings(400)[0]
    image[:, :, :40] = 0
    path = make_geotiff(image, nodata=0, transform=from_origin(600000, 5750000, 0.15, 0.15))
    card = make_card()
    result = predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card))
    assert result.resampled
    assert any("resampled" in w for w in result.warnings)
    with rasterio.open(path) as src, rasterio.open(result.probability_path) as out:
        assert (out.width, out.height, out.transform) == (src.width, src.height, src.transform)
    prob, valid, _ = read_probability(result.probability_path)
    assert not valid[:, :40].any() and valid[:, 41:].all()
    assert 0 < prob[:, :, 41:].min() and prob.max() < 1


# ---------------------------------------------------------------------------------------------
# TTA and look direction


def test_d4_tta_makes_predictions_rotation_equivariant(make_geotiff, tmp_path):
    image = synthetic_buildings(128, seed=5)[0]
    card = make_card(tile_size=128, overlap=0)
    model = make_model(card)
    options = InferenceOptions(precision="fp32", output_dtype="float32", tta=True)
    a = predict_raster(make_geotiff(image, "a.tif"), card, tmp_path / "pa.tif", options, model=model)
    b = predict_raster(
        make_geotiff(np.rot90(image, 1, (1, 2)).copy(), "b.tif"), card, tmp_path / "pb.tif", options, model=model
    )
    prob_a, _, _ = read_probability(a.probability_path)
    prob_b, _, _ = read_probability(b.probability_path)
    assert np.abs(np.rot90(prob_a, 1, (1, 2)) - prob_b).max() < 1e-4
    # Without TTA the network alone is not rotation-equivariant (so the check above means something).
    plain = InferenceOptions(precision="fp32", output_dtype="float32")
    c = predict_raster(make_geotiff(image, "c.tif"), card, tmp_path / "pc.tif", plain, model=model)
    d = predict_raster(
        make_geotiff(np.rot90(image, 1, (1, 2)).copy(), "d.tif"), card, tmp_path / "pd.tif", plain, model=model
    )
    prob_c, _, _ = read_probability(c.probability_path)
    prob_d, _, _ = read_probability(d.probability_path)
    assert np.abs(np.rot90(prob_c, 1, (1, 2)) - prob_d).max() > 1e-3


def test_look_direction_flip_rotates_tiles_180_degrees(make_geotiff, tmp_path):
    image = synthetic_buildings(128, seed=6)[0]
    card = make_card(tile_size=128, overlap=0)
    model = make_model(card)
    flipped = InferenceOptions(precision="fp32", output_dtype="float32", look_direction_flip=True)
    plain = InferenceOptions(precision="fp32", output_dtype="float32")
    a = predict_raster(make_geotiff(image, "a.tif"), card, tmp_path / "pa.tif", flipped, model=model)
    b = predict_raster(
        make_geotiff(np.rot90(image, 2, (1, 2)).copy(), "b.tif"), card, tmp_path / "pb.tif", plain, model=model
    )
    prob_a, _, _ = read_probability(a.probability_path)
    prob_b, _, _ = read_probability(b.probability_path)
    assert np.abs(np.rot90(prob_b, 2, (1, 2)) - prob_a).max() < 1e-5


# ---------------------------------------------------------------------------------------------
# Bands


def test_band_count_mismatch_names_both_counts(make_geotiff, tmp_path):
    path = make_geotiff(synthetic_buildings(64, bands=2)[0])
    with pytest.raises(ModelError) as info:
        predict_raster(path, make_card(), tmp_path / "p.tif", FP32, model=make_model(make_card()))
    assert "2 bands" in str(info.value) and "3 bands" in str(info.value)
    assert not (tmp_path / "p.tif").exists()


def test_panchromatic_needs_the_card_to_allow_it(make_geotiff, tmp_path):
    path = make_geotiff(synthetic_buildings(64, bands=1)[0])
    with pytest.raises(ModelError, match="1 band"):
        predict_raster(path, make_card(), tmp_path / "p.tif", FP32, model=make_model(make_card()))
    card = make_card(allow_panchromatic=True)
    result = predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card))
    assert result.probability_path.exists()
    assert any("repeated" in w for w in result.warnings)


def test_rgba_alpha_band_is_a_mask_not_a_band(tmp_path):
    image = synthetic_buildings(96)[0]
    alpha = np.full((1, 96, 96), 255, np.uint8)
    alpha[0, :30] = 0
    path = tmp_path / "rgba.tif"
    profile = dict(
        driver="GTiff",
        width=96,
        height=96,
        count=4,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(600000, 5750000, 0.5, 0.5),
        photometric="RGB",
        alpha="YES",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.concatenate([image, alpha]))
    card = make_card()
    _, valid, _ = read_probability(
        predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card)).probability_path
    )
    assert not valid[:30].any() and valid[30:].all()


# ---------------------------------------------------------------------------------------------
# Bad input and outputs


def test_missing_raster(tmp_path):
    with pytest.raises(InputError, match="not found"):
        predict_raster(tmp_path / "nope.tif", make_card(), tmp_path / "p.tif", FP32, model=make_model(make_card()))


def test_corrupt_raster(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"not really a tiff" * 10)
    with pytest.raises(InputError, match="corrupt"):
        predict_raster(bad, make_card(), tmp_path / "p.tif", FP32, model=make_model(make_card()))


def test_zero_size_raster(tmp_path):
    vrt = tmp_path / "empty.vrt"
    vrt.write_text('<VRTDataset rasterXSize="0" rasterYSize="0"><VRTRasterBand dataType="Byte" band="1"/></VRTDataset>')
    with pytest.raises(InputError, match="empty"):
        predict_raster(vrt, make_card(), tmp_path / "p.tif", FP32, model=make_model(make_card()))


def test_unwritable_output_folder(make_geotiff, tmp_path):
    path = make_geotiff(synthetic_buildings(64)[0])
    with pytest.raises(OutputError, match="does not exist"):
        predict_raster(path, make_card(), tmp_path / "missing" / "p.tif", FP32, model=make_model(make_card()))
    # /proc refuses new files even for root, unlike a chmod-ed folder.
    with pytest.raises(OutputError, match="Cannot write"):
        predict_raster(path, make_card(), Path("/proc/footprint_probability.tif"), FP32, model=make_model(make_card()))


def test_output_equal_to_input_is_refused(make_geotiff):
    path = make_geotiff(synthetic_buildings(64)[0])
    with pytest.raises(OutputError, match="input raster"):
        predict_raster(path, make_card(), path, FP32, model=make_model(make_card()))


def test_cancel_leaves_nothing_behind(make_geotiff, tmp_path):
    path = make_geotiff(synthetic_buildings(600)[0], name="in.tif")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "p.tif").write_bytes(b"previous result")
    calls = {"n": 0}

    def cancel_after_a_few_checks() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    card = make_card()
    with pytest.raises(CanceledError):
        predict_raster(
            path, card, out_dir / "p.tif", FP32, model=make_model(card), is_canceled=cancel_after_a_few_checks
        )
    assert [p.name for p in out_dir.iterdir()] == ["p.tif"]
    assert (out_dir / "p.tif").read_bytes() == b"previous result"  # the old output is untouched


def test_weights_that_do_not_match_their_card(make_geotiff, tmp_path):
    card = make_card(name="mismatch")
    card_path = zoo.save_model(make_model(card), card, tmp_path / "zoo")
    weights = card_path.parent / card.weights_file
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    path = make_geotiff(synthetic_buildings(64)[0])
    with pytest.raises(ModelError, match="does not match its card"):
        predict_raster(path, card, tmp_path / "p.tif", FP32)
    assert not (tmp_path / "p.tif").exists()


def test_loads_verified_weights_from_the_card(make_geotiff, tmp_path):
    card = make_card(name="good")
    model = make_model(card)
    zoo.save_model(model, card, tmp_path / "zoo")
    path = make_geotiff(synthetic_buildings(96)[0])
    options = InferenceOptions(precision="fp32", output_dtype="float32")
    from_card = predict_raster(path, card, tmp_path / "a.tif", options)
    given = predict_raster(path, card, tmp_path / "b.tif", options, model=model)
    a, _, _ = read_probability(from_card.probability_path)
    b, _, _ = read_probability(given.probability_path)
    assert np.abs(a - b).max() < 1e-6


# ---------------------------------------------------------------------------------------------
# Device and precision


def test_device_selection_reports_fallbacks():
    assert describe_devices()[-1].device == "cpu"
    if not torch.cuda.is_available():
        choice = select_device("cuda")
        assert choice.device == "cpu" and "CUDA" in choice.note
        assert select_device("auto").note
    bogus = select_device("tpu")
    assert bogus.device == "cpu" and "Unknown device" in bogus.note
    assert select_device("cpu").note == ""


def test_fp16_on_cpu_falls_back_to_fp32_with_a_note(make_geotiff, tmp_path):
    card = make_card()
    result = predict_raster(
        make_geotiff(synthetic_buildings(64)[0]),
        card,
        tmp_path / "p.tif",
        InferenceOptions(device="cpu", precision="fp16"),
        model=make_model(card),
    )
    assert result.precision == "fp32"
    assert any("fp16" in w for w in result.warnings)


def test_auto_precision_on_cpu_is_checked_against_fp32(make_geotiff, tmp_path):
    from footprint_plugin.core.engine.device import cpu_supports_bf16

    card = make_card()
    result = predict_raster(
        make_geotiff(synthetic_buildings(128)[0]), card, tmp_path / "p.tif", InferenceOptions(), model=make_model(card)
    )
    if cpu_supports_bf16():
        assert result.precision in ("bf16", "fp32")
        if result.precision == "fp32":
            from footprint_plugin.core.engine.inference import BF16_FALLBACK_WARNING

            assert BF16_FALLBACK_WARNING in result.warnings
    else:
        assert result.precision == "fp32"


# ---------------------------------------------------------------------------------------------
# Real imagery


@pytest.mark.shared
def test_real_rgb_tile_with_nodata(shared_data, tmp_path):
    path = next((shared_data / "eo" / "spacenet6_rotterdam_psrgb" / "tiles").glob("*.tif"))
    card = make_card(tile_size=512, overlap=64)
    result = predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card))
    with rasterio.open(path) as ds:
        nodata = (ds.read() == 0).all(axis=0)
        assert (result.width, result.height) == (ds.width, ds.height)
    _, valid, _ = read_probability(result.probability_path)
    assert 0.3 < nodata.mean() < 0.45  # README: 37 % nodata
    assert np.array_equal(valid, ~nodata)


@pytest.mark.shared
def test_real_panchromatic_uint16_into_rgb_model(shared_data, tmp_path):
    path = shared_data / "eo" / "spacenet4_atlanta_pan" / "tiles" / "sample_geotiff.tif"
    card = make_card(tile_size=512, overlap=64, allow_panchromatic=True)
    result = predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card))
    assert result.gsd_m == pytest.approx(0.5, rel=0.05) and not result.resampled
    prob, valid, _ = read_probability(result.probability_path)
    assert prob.shape == (1, 900, 900) and valid.mean() > 0.5


@pytest.mark.shared
def test_real_web_mercator_mosaic_is_resampled(shared_data, tmp_path):
    # Banepa: 0.15 m Mercator = 0.13 m ground; a 0.5 m model sees it resampled ~4x.
    path = next((shared_data / "eo" / "hotosm_banepa" / "tiles").glob("*.tif"))
    card = make_card()
    result = predict_raster(path, card, tmp_path / "p.tif", FP32, model=make_model(card))
    assert result.gsd_m == pytest.approx(0.132, rel=0.03)
    assert result.resampled
    with rasterio.open(path) as src, rasterio.open(result.probability_path) as out:
        assert (out.width, out.height, out.transform, out.crs) == (src.width, src.height, src.transform, src.crs)


@pytest.mark.parametrize("in_size,model_size", [((100, 80), (50, 40)), ((30, 45), (90, 135))])
def test_grid_resampler_streams_exact_bilinear_interpolation(in_size, model_size):
    from footprint_plugin.core.engine.inference import GridResampler

    (in_h, in_w), (m_h, m_w) = in_size, model_size
    yy, xx = np.mgrid[0:m_h, 0:m_w].astype(np.float32)
    model_rows = np.stack([yy + 2 * xx, 3 * yy - xx])  # linear: bilinear interpolation is exact
    resampler = GridResampler(in_w, in_h, m_w, m_h, heads=2)
    out = np.full((2, in_h, in_w), np.nan, np.float32)
    rng = np.random.default_rng(0)
    row = 0
    while row < m_h:
        n = int(rng.integers(1, 12))
        first, rows = resampler.push(model_rows[:, row : row + n])
        out[:, first : first + rows.shape[1]] = rows
        row += n
    assert not np.isnan(out).any()  # every input row was produced exactly once, in order
    fy = np.clip((np.arange(in_h) + 0.5) * m_h / in_h - 0.5, 0, m_h - 1)[:, None]
    fx = np.clip((np.arange(in_w) + 0.5) * m_w / in_w - 0.5, 0, m_w - 1)[None, :]
    assert np.allclose(out[0], fy + 2 * fx, atol=1e-3) and np.allclose(out[1], 3 * fy - fx, atol=1e-3)


def test_bf16_agreement_measures_mask_iou_and_probability_change():
    from footprint_plugin.core.engine.inference import BF16_MIN_MASK_IOU, bf16_agreement

    reference = np.zeros((1, 1, 100, 100), np.float32)
    reference[..., :50, :50] = 0.9  # 25 % buildings
    same = reference + 0.01
    assert bf16_agreement(reference, same, 0.5) == pytest.approx((1.0, 0.01))
    shifted = reference.copy()
    shifted[..., 50:53, :50] = 0.9  # 150 more pixels: IoU 2500 / 2650
    iou, max_diff = bf16_agreement(reference, shifted, 0.5)
    assert iou == pytest.approx(2500 / 2650) and iou < BF16_MIN_MASK_IOU and max_diff == pytest.approx(0.9)
    # A batch without buildings: one flipped pixel must not count as a total mismatch.
    empty = np.zeros((1, 1, 100, 100), np.float32)
    flipped = empty.copy()
    flipped[..., 0, 0] = 0.6
    assert bf16_agreement(empty, flipped, 0.5)[0] == pytest.approx(0.99)


@pytest.mark.parametrize("architecture", ["unet_mobilenetv2", "unet_resnet34", "unet_vgg11", "deeplabv3plus_resnet"])
def test_every_architecture_runs_end_to_end_in_every_cpu_precision(make_geotiff, tmp_path, architecture):
    from footprint_plugin.core.engine.device import cpu_supports_bf16

    card = make_card(architecture=architecture, tile_size=64, overlap=16)
    model = make_model(card)
    path = make_geotiff(synthetic_buildings(96)[0])
    precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    results = {}
    for precision in precisions:
        options = InferenceOptions(precision=precision, output_dtype="float32")
        result = predict_raster(path, card, tmp_path / f"{precision}.tif", options, model=model)
        assert result.precision == precision
        results[precision], valid, _ = read_probability(result.probability_path)
        assert valid.all()
    if "bf16" in results:
        assert np.abs(results["bf16"] - results["fp32"]).mean() < 0.05


def test_far_coarser_raster_than_model_is_refused_with_advice(tmp_path):
    """A 10 m raster on a 0.5 m model would be upsampled 20x (400x the work) for nothing: refuse clearly."""
    from rasterio.transform import from_origin

    from footprint_plugin.core.common.errors import InputError
    from footprint_plugin.core.engine.inference import predict_raster

    raster = write_geotiff(
        tmp_path / "coarse.tif", np.full((3, 64, 64), 120, np.uint8), transform=from_origin(600000, 5750000, 10.0, 10.0)
    )
    card = _card_for_coarse_test()
    out = tmp_path / "prob.tif"
    with pytest.raises(InputError, match=r"20 times coarser.*within 8x"):
        predict_raster(raster, card, out, model=_ConstantNet())
    assert not out.exists()


def _card_for_coarse_test():
    from footprint_plugin.core.zoo.modelcard import ModelCard

    return ModelCard(
        name="coarse_test",
        architecture="unet_mobilenetv2",
        in_channels=3,
        out_channels=1,
        band_roles=["red", "green", "blue"],
        scaling={"method": "divide", "value": 255.0},
        gsd_m=0.5,
        tile_size=64,
        overlap=8,
    )


class _ConstantNet(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 1, x.shape[2], x.shape[3])
