"""Labels, targets, chips, split and augmentation of the training engine (small synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.transform import from_origin

from footprint_plugin.core.common.errors import InputError
from footprint_plugin.core.io.vector_io import write_polygons
from footprint_plugin.core.learning.augment import AugmentOptions, _pan_like, augment_chip, blur_chip, recolor_roofs
from footprint_plugin.core.learning.chips import ChipSampler, PreparedRaster, assign_spatial_blocks, read_at_gsd
from footprint_plugin.core.learning.labels import clip_ground_truth, load_labels, rasterize_region, rasterize_targets

UTM = "EPSG:32631"
TRANSFORM = from_origin(600000.0, 5750000.0, 0.5, 0.5)


def box_px(col0, row0, col1, row1, transform=TRANSFORM):
    """A box given in pixel coordinates, returned in CRS coordinates."""
    (x0, y0), (x1, y1) = transform * (col0, row0), transform * (col1, row1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def test_targets_footprint_boundary_contact():
    # Two 20 px squares 2 px (1 m) apart, and a lone one far away.
    geoms = [box_px(10, 10, 30, 30), box_px(32, 10, 52, 30), box_px(70, 70, 90, 90)]
    targets = rasterize_targets(geoms, TRANSFORM, (100, 100), ("footprint", "boundary", "contact"), 0.5, 1.0, 2.0)
    footprint, boundary, contact = targets
    assert footprint.sum() == 3 * 400
    # Contact: only in the gap between the two close buildings, never inside a building.
    assert contact[15:25, 30:32].all()
    assert contact[:, 60:].sum() == 0
    assert (contact & footprint).sum() == 0
    # Boundary: a band on the outline (1 m = 2 px wide), not the building interior.
    assert boundary[20, 10] == 1 and boundary[20, 29] == 1 and boundary[20, 20] == 0
    assert boundary[80, 80] == 0 and boundary[70, 80] == 1


def test_labels_in_another_crs_are_reprojected(tmp_path):
    from rasterio.warp import transform_geom

    geoms = [box_px(10, 10, 30, 30), box_px(50, 40, 80, 60)]
    wgs84 = [shapely.geometry.shape(transform_geom(UTM, "EPSG:4326", shapely.geometry.mapping(g))) for g in geoms]
    path = write_polygons(tmp_path / "labels.geojson", wgs84, [{"building": "yes"}] * 2, "EPSG:4326")
    from rasterio.crs import CRS

    labels = load_labels(path, CRS.from_string(UTM).to_wkt())
    targets = rasterize_targets(labels.geometries, TRANSFORM, (100, 100), ("footprint",), 0.5)[0]
    expected = rasterize_targets(geoms, TRANSFORM, (100, 100), ("footprint",), 0.5)[0]
    assert (targets != expected).sum() <= 4  # a few edge pixels from 1e-7 degree rounding at most
    assert targets.sum() == pytest.approx(400 + 600, abs=4)


def test_invalid_label_is_repaired_and_counted(tmp_path):
    bowtie = shapely.Polygon([(600000, 5749990), (600010, 5749980), (600010, 5749990), (600000, 5749980)])
    assert not bowtie.is_valid
    path = write_polygons(tmp_path / "bad.gpkg", [bowtie, box_px(40, 40, 60, 60)], [{}, {}], UTM)
    labels = load_labels(path, None)
    assert labels.n_fixed == 1
    assert all(g.is_valid for g in labels.geometries)


def test_empty_label_layer_is_an_error(tmp_path):
    path = write_polygons(tmp_path / "empty.gpkg", [], [], UTM, fields={"building": str})
    with pytest.raises(InputError, match="no building polygons"):
        load_labels(path, None)


def test_aoi_region_and_ground_truth_clipping():
    aoi = [box_px(0, 0, 50, 100)]
    inside = rasterize_region(aoi, TRANSFORM, (100, 100))
    assert inside[:, :50].all() and not inside[:, 50:].any()
    buildings = [box_px(10, 10, 20, 20), box_px(45, 10, 65, 20), box_px(70, 70, 80, 80), box_px(30, 10, 54, 20)]
    kept = clip_ground_truth(buildings, TRANSFORM, inside)
    # Inside (kept), 25 % inside (dropped), outside (dropped), 83 % inside (kept, cut at the valid edge).
    assert len(kept) == 2 and kept[0].equals(buildings[0])
    assert kept[1].equals(box_px(30, 10, 50, 20))
    # All pixels valid: buildings are cut at the raster frame.
    edge = clip_ground_truth([box_px(90, 10, 104, 20)], TRANSFORM, np.ones((100, 100), bool))
    assert edge[0].equals(box_px(90, 10, 100, 20))


def _prepared(name, shape, transform, positives=None, crs=UTM) -> PreparedRaster:
    targets = np.zeros((1, *shape), np.uint8)
    if positives is not None:
        targets[0] = positives
    return PreparedRaster(
        name=name,
        path=None,
        image=np.zeros((3, *shape), np.float32),
        targets=targets,
        supervised=np.ones(shape, bool),
        transform=transform,
        crs_wkt=crs,
        labels=[],
        source_gsd_m=0.5,
    )


def test_spatial_blocks_put_the_same_ground_on_the_same_side():
    # The same 200 m x 100 m of ground at 0.5 m and at 0.25 m (like OAM z19 and z20 mosaics).
    coarse = _prepared("area", (200, 400), TRANSFORM)
    fine = _prepared("area", (400, 800), from_origin(600000.0, 5750000.0, 0.25, 0.25))
    other = _prepared("elsewhere", (100, 100), from_origin(700000.0, 5750000.0, 0.5, 0.5))
    assign_spatial_blocks([coarse, fine, other], 0.25)
    assert coarse.val_mask.mean() == pytest.approx(0.25, abs=0.03)
    assert other.val_mask.mean() == pytest.approx(0.25, abs=0.05)
    # Strip along the long (x) axis at the east end, identical on the ground in both rasters.
    assert coarse.val_mask[:, -1].all() and not coarse.val_mask[:, 0].any()
    cut_coarse = np.argmax(coarse.val_mask[0]) * 0.5
    cut_fine = np.argmax(fine.val_mask[0]) * 0.25
    assert abs(cut_coarse - cut_fine) <= 1.0
    # Training windows never touch held-out pixels.
    sampler = ChipSampler([coarse], chip_size=64, empty_chip_ratio=1.0)
    for window in sampler.sample(40, np.random.default_rng(0)):
        _, _, weight = sampler.extract(window)
        held = coarse.val_mask[max(window.row, 0) : window.row + 64, max(window.col, 0) : window.col + 64]
        assert not (weight[: held.shape[0], : held.shape[1]].astype(bool) & held).any()


def test_validation_strip_holds_buildings_when_one_end_is_empty():
    # Tall area (strip cut at the south end) whose southern half is water without buildings, like SpaceNet Rio.
    buildings = np.zeros((400, 100), np.uint8)
    buildings[20:180:20, 10:90:20] = 1
    buildings = np.maximum(buildings, np.roll(buildings, 1, axis=0))
    raster = _prepared("rio", (400, 100), TRANSFORM, buildings)
    assign_spatial_blocks([raster], 0.25)
    held = raster.val_mask & (raster.targets[0] > 0)
    kept = ~raster.val_mask & (raster.targets[0] > 0)
    assert held.sum() > 0 and kept.sum() > held.sum()
    assert raster.val_mask[-1].all() and not raster.val_mask[0].any()


def test_empty_chips_are_undersampled():
    positives = np.zeros((512, 512), np.uint8)
    positives[:64, :64] = 1  # buildings in one corner only: most random windows are empty
    raster = _prepared("a", (512, 512), TRANSFORM, positives)
    sampler = ChipSampler([raster], chip_size=64, empty_chip_ratio=0.25)
    windows = sampler.sample(40, np.random.default_rng(1))
    assert len(windows) == 40
    assert sum(not w.has_buildings for w in windows) == 10


def test_augmentation_sar_only_flips_left_right_and_eo_grayscale():
    image = np.zeros((1, 8, 8), np.float32)
    image[0, 0, 0] = 1.0  # top-left corner marker
    targets = image.copy()
    weight = np.ones((8, 8), np.float32)
    rng = np.random.default_rng(0)
    corners = set()
    for _ in range(50):
        out, out_targets, _ = augment_chip(image, targets, weight, rng, AugmentOptions.for_policy("SAR", "robust"))
        assert np.array_equal(out, out_targets)
        corners.add(tuple(np.argwhere(out[0] == 1.0)[0]))
    assert corners == {(0, 0), (0, 7)}  # never mirrored top-bottom nor rotated

    rgb = np.stack([np.full((8, 8), v, np.float32) for v in (0.2, 0.5, 0.8)])
    options = AugmentOptions(grayscale_probability=1.0, brightness=0.0, contrast=0.0)
    gray, _, _ = augment_chip(rgb, np.zeros((1, 8, 8), np.float32), weight, np.random.default_rng(3), options)
    assert np.allclose(gray[0], gray[1]) and np.allclose(gray[1], gray[2])
    # Pan-like grayscale: vegetation (green) ends up brighter than a grey roof of the same luminance.
    scene = np.full((3, 8, 8), 0.5, np.float32)
    scene[:, :, :4] = np.array([0.3, 0.7, 0.3], np.float32)[:, None, None]  # trees on the left, roof on the right
    pan = _pan_like(scene.mean(axis=0), scene, vegetation_gain=1.0)
    assert pan[:, :4].min() > pan[:, 4:].max()
    # Same seed, same augmentation: training is reproducible.
    a = augment_chip(rgb, targets, weight, np.random.default_rng(7), AugmentOptions())
    b = augment_chip(rgb, targets, weight, np.random.default_rng(7), AugmentOptions())
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_roof_recolouring_changes_only_buildings_each_its_own_way():
    image = np.full((3, 40, 40), 0.8, np.float32)
    footprint = np.zeros((40, 40), np.float32)
    footprint[5:15, 5:15] = 1.0
    footprint[25:35, 25:35] = 1.0
    out = recolor_roofs(image, footprint, np.random.default_rng(4), (0.3, 0.6))
    # Background two pixels away from any roof is untouched; roof centres are darker, each by its own gain.
    assert np.array_equal(out[:, 20, :], image[:, 20, :]) and np.array_equal(out[:, :3, :], image[:, :3, :])
    first, second = out[:, 10, 10], out[:, 30, 30]
    assert (first < 0.55).all() and (second < 0.55).all()
    assert not np.allclose(first, second)
    # The edge is soft: the outermost roof pixel lies between its roof and the background.
    assert first.mean() < out[:, 5, 10].mean() < 0.8
    # No building, no change.
    assert np.array_equal(
        recolor_roofs(image, np.zeros((40, 40), np.float32), np.random.default_rng(0), (0.3, 0.6)), image
    )


def test_blur_and_robust_policy_keep_targets_and_shapes():
    image = np.zeros((3, 16, 16), np.float32)
    image[:, 8, 8] = 1.0
    blurred = blur_chip(image, 1.0)
    assert blurred[0, 8, 8] < 0.5 and blurred[0, 8, 9] > 0.0 and blurred.sum() == pytest.approx(3.0, rel=1e-3)
    targets = np.zeros((3, 16, 16), np.float32)
    targets[0, 4:12, 4:12] = 1.0
    weight = np.ones((16, 16), np.float32)
    rng = np.random.default_rng(0)
    for policy in ("robust", "panchromatic") * 15:
        out, out_targets, out_weight = augment_chip(
            image, targets, weight, rng, AugmentOptions.for_policy("EO", policy)
        )
        assert out.shape == image.shape and out.dtype == np.float32
        assert out_targets.sum() == targets.sum() and out_weight.sum() == weight.sum()


def test_read_at_model_gsd_resamples(make_geotiff):
    from conftest import synthetic_buildings

    image, _ = synthetic_buildings(256)
    path = make_geotiff(image, transform=from_origin(600000.0, 5750000.0, 0.25, 0.25))
    raw, valid, transform, source_gsd = read_at_gsd(path, 0.5)
    assert raw.shape == (3, 128, 128) and valid.all()
    assert source_gsd == pytest.approx(0.25, rel=0.01)
    assert transform.a == pytest.approx(0.5) and transform.e == pytest.approx(-0.5)
    # Within 2 % of the model GSD the pixels are left as they are.
    raw, _, transform, _ = read_at_gsd(path, 0.251)
    assert raw.shape == (3, 256, 256) and transform == Affine(0.25, 0, 600000.0, 0, -0.25, 5750000.0)


def test_no_overlap_between_raster_and_labels(tmp_path, make_geotiff):
    from footprint_plugin.core.learning.chips import prepare_raster
    from footprint_plugin.core.zoo.modelcard import ModelCard

    path = make_geotiff(np.zeros((3, 64, 64), np.uint8) + 100)
    far_away = write_polygons(tmp_path / "far.geojson", [shapely.box(0, 0, 10, 10)], [{}], UTM)
    card = ModelCard("m", "unet_mobilenetv2", 3, 1, ["red", "green", "blue"], gsd_m=0.5)
    with pytest.raises(InputError, match="overlaps"):
        prepare_raster(path, far_away, None, "a", card, ["footprint"], 1.0)


def test_read_at_gsd_valid_pixels_match_inference(tmp_path, make_geotiff):
    """Training marks the same pixels invalid as inference: NaN/inf whatever the nodata value, and missing files."""
    image = np.full((3, 32, 32), 100.0, np.float32)
    image[0, 2, 3] = np.nan
    image[1, 5, 6] = np.inf
    image[2, 7, 8] = -9999.0
    path = make_geotiff(image, nodata=-9999.0)
    raw, valid, _, _ = read_at_gsd(path, 0.5)
    assert raw.shape == (3, 32, 32)
    assert not valid[2, 3] and not valid[5, 6] and not valid[7, 8] and valid.sum() == 32 * 32 - 3
    with pytest.raises(InputError, match="not found"):
        read_at_gsd(tmp_path / "missing.tif", 0.5)
