"""Probabilities -> building polygons: thresholds, splitting, cleaning, attributes, streaming, formats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from rasterio.transform import from_origin
from scipy import ndimage

from footprint_plugin.core.common.errors import CanceledError, InputError
from footprint_plugin.core.common.vocabulary import BUILDING_FIELDS
from footprint_plugin.core.io.vector_io import read_polygons
from footprint_plugin.core.vectors.evaluate import score_polygons
from footprint_plugin.core.vectors.polygons import PolygonOptions, polygonize_array, polygonize_raster, write_buildings

UTM = "EPSG:32631"
TRANSFORM = from_origin(600000.0, 5750000.0, 0.5, 0.5)


def blurred_rectangles(size=360, count=70, seed=3):
    """Probabilities from random rectangles (possibly overlapping), softly blurred like a model's output."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.float32)
    for _ in range(count):
        h, w = rng.integers(10, 45, 2)
        r, c = rng.integers(0, size - h), rng.integers(0, size - w)
        mask[r : r + h, c : c + w] = 1.0
    return ndimage.gaussian_filter(mask, 1.2).clip(0, 1)


def canonical(result):
    assert all(g.is_valid and g.geom_type == "Polygon" for g in result.geometries)
    return sorted(
        (shapely.normalize(g).wkb, a["score"], a["area_m2"]) for g, a in zip(result.geometries, result.attributes)
    )


def test_rectangles_become_valid_polygons_with_attributes():
    prob = np.zeros((200, 200), np.float32)
    prob[20:60, 30:90] = 0.9  # 20 m x 30 m
    prob[100:104, 100:104] = 0.9  # 4 m², below the 20 m² minimum
    prob[120:180, 120:180] = 0.8
    prob[140:144, 140:144] = 0.1  # 4 m² hole: filled
    prob[150:170, 125:135] = 0.1  # 50 m² courtyard: kept
    result = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(), source="img.tif", model="m v1")
    assert len(result.geometries) == 2
    assert result.gsd_m == pytest.approx(0.5)
    assert all(g.is_valid for g in result.geometries)
    first, second = result.attributes
    assert set(first) == set(BUILDING_FIELDS)
    assert first["area_m2"] == pytest.approx(600.0)
    assert first["perimeter_m"] == pytest.approx(100.0)
    assert first["score"] == pytest.approx(0.9, abs=1e-4)
    assert first["compactness"] == pytest.approx(4 * np.pi * 600 / 100**2, abs=1e-3)
    assert (first["source"], first["model"], first["regularized"]) == ("img.tif", "m v1", False)
    assert len(result.geometries[1].interiors) == 1
    assert second["area_m2"] == pytest.approx(900 - 50)
    minx, miny, maxx, maxy = result.geometries[0].bounds
    assert (minx, maxy) == (600015.0, 5749990.0)


def test_threshold_and_min_area_options():
    prob = np.zeros((100, 100), np.float32)
    prob[10:30, 10:30] = 0.6  # 100 m²
    assert len(polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(threshold=0.5)).geometries) == 1
    assert len(polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(threshold=0.7)).geometries) == 0
    assert len(polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(min_area_m2=150)).geometries) == 0


def test_three_by_three_blocks_equal_whole_raster():
    prob = blurred_rectangles()
    whole = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(block_size=4096))
    blocks = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(block_size=120))  # 3 x 3 blocks
    assert len(whole.geometries) > 20
    assert canonical(blocks) == canonical(whole)
    # Reading order (top row first), so the written layer's fid numbers buildings the same way every run.
    tops = [-g.bounds[3] for g in blocks.geometries]
    assert tops == sorted(tops)


def test_three_by_three_blocks_with_regularization_and_speckle():
    prob = blurred_rectangles(seed=5)
    rng = np.random.default_rng(0)
    prob = np.where(rng.random(prob.shape) < 0.02, 1.0, prob).astype(np.float32)  # salt speckle
    options = dict(regularize=True, min_area_m2=5.0)
    whole = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(block_size=4096, **options))
    blocks = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(block_size=120, **options))
    assert canonical(blocks) == canonical(whole)
    assert any(a["regularized"] for a in whole.attributes)


def touching_pair():
    """Two buildings sharing a wall: one footprint blob, a contact line between them."""
    footprint = np.zeros((120, 160), np.float32)
    footprint[30:90, 20:80] = 0.95
    footprint[40:80, 80:140] = 0.95
    boundary = np.zeros_like(footprint)
    contact = np.zeros_like(footprint)
    contact[40:80, 77:83] = 0.9
    for r0, r1, c0, c1 in ((30, 90, 20, 80), (40, 80, 80, 140)):
        boundary[r0 : r0 + 3, c0:c1] = boundary[r1 - 3 : r1, c0:c1] = 0.8
        boundary[r0:r1, c0 : c0 + 3] = boundary[r0:r1, c1 - 3 : c1] = 0.8
    return np.stack([footprint, boundary, contact])


def test_watershed_splits_touching_buildings():
    prob = touching_pair()
    split = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions())  # auto: watershed with 3 heads
    assert len(split.geometries) == 2
    areas = sorted(a["area_m2"] for a in split.attributes)
    assert areas == pytest.approx([600, 900], rel=0.05)
    # Each outline is simplified on its own, so a shared wall may overlap by a sliver.
    assert split.geometries[0].intersection(split.geometries[1]).area < 1.0
    merged = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(split="none"))
    assert len(merged.geometries) == 1


def test_watershed_blocks_give_the_same_buildings():
    prob = touching_pair()
    whole = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions())
    blocks = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(block_size=64, overlap=64))
    scores, _ = score_polygons(blocks.geometries, whole.geometries, iou_threshold=0.95)
    assert (scores.tp, scores.fp, scores.fn) == (2, 0, 0)


def test_distance_split_separates_a_dumbbell_but_not_a_rectangle():
    yy, xx = np.mgrid[:120, :200]
    blobs = ((yy - 60) ** 2 + (xx - 55) ** 2 < 40**2) | ((yy - 60) ** 2 + (xx - 140) ** 2 < 40**2)
    blobs[55:65, 55:140] = True  # narrow neck
    options = PolygonOptions(split="distance")
    assert len(polygonize_array(blobs.astype(np.float32), TRANSFORM, UTM, options).geometries) == 2
    rectangle = np.zeros((120, 200), np.float32)
    rectangle[20:60, 10:190] = 1.0
    assert len(polygonize_array(rectangle, TRANSFORM, UTM, options).geometries) == 1
    with pytest.raises(InputError, match="boundary/contact"):
        polygonize_array(rectangle, TRANSFORM, UTM, PolygonOptions(split="watershed"))


def test_nodata_is_never_a_building():
    prob = np.full((100, 100), 0.9, np.float32)
    prob[:, 50:] = np.nan
    nodata = np.zeros((100, 100), bool)
    nodata[:50] = True
    result = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(), nodata_mask=nodata)
    assert len(result.geometries) == 1
    assert result.attributes[0]["area_m2"] == pytest.approx(50 * 50 * 0.25)


def test_uint8_probability_raster_matches_array(make_geotiff, tmp_path):
    prob = blurred_rectangles(size=300, seed=7)
    stored = np.round(prob * 254).astype(np.uint8)
    stored[:40, :] = 255  # nodata strip
    path = make_geotiff(stored, name="prob.tif", nodata=255, tiled=True)
    import rasterio

    with rasterio.open(path, "r+") as dataset:
        dataset.scales = (1 / 254,)
        dataset.update_tags(FOOTPRINT_HEADS="footprint")
        dataset.set_band_description(1, "footprint")
    fractions = []
    result = polygonize_raster(path, PolygonOptions(block_size=100), model="m v1", progress=fractions.append)
    expected_prob = np.where(stored == 255, np.nan, stored / 254.0).astype(np.float32)
    expected = polygonize_array(expected_prob, TRANSFORM, UTM, PolygonOptions(), source="prob.tif", model="m v1")
    assert canonical(result) == canonical(expected)
    assert result.attributes[0]["source"] == "prob.tif"
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert all(g.bounds[3] <= 5750000.0 - 20.0 for g in result.geometries)
    out = write_buildings(result, tmp_path / "b.gpkg")
    back = read_polygons(out)
    assert len(back.geometries) == len(result.geometries)
    assert set(back.attributes[0]) == set(BUILDING_FIELDS)
    assert "UTM zone 31N" in back.crs_wkt


def test_float32_three_band_raster_with_nan(make_geotiff):
    prob = touching_pair()
    prob[:, :, :10] = np.nan
    path = make_geotiff(prob, name="prob3.tif", nodata=float("nan"))
    result = polygonize_raster(path, PolygonOptions())
    assert len(result.geometries) == 2


def test_geographic_raster_measures_in_metres():
    # ~0.5 m pixels at 45 N in lon/lat degrees.
    transform = from_origin(9.0, 45.0, 0.5 / 78846.8, 0.5 / 111132.0)
    prob = np.zeros((100, 100), np.float32)
    prob[20:60, 20:80] = 1.0  # 20 m x 30 m
    result = polygonize_array(prob, transform, "EPSG:4326", PolygonOptions())
    assert result.gsd_m == pytest.approx(0.5, rel=0.01)
    assert result.attributes[0]["area_m2"] == pytest.approx(600, rel=0.01)
    assert result.attributes[0]["perimeter_m"] == pytest.approx(100, rel=0.01)


def test_cancel_and_bad_options():
    prob = blurred_rectangles(size=200)
    with pytest.raises(CanceledError):
        polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(block_size=100), is_canceled=lambda: True)
    with pytest.raises(InputError, match="threshold"):
        polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(threshold=1.5))
    with pytest.raises(InputError, match="split"):
        polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(split="magic"))
    with pytest.raises(InputError, match="not found"):
        polygonize_raster("/nonexistent/prob.tif")


def test_geopackage_has_one_key_numbering_buildings_in_reading_order(tmp_path):
    """Issue 12: one key field only (the GeoPackage fid), no id/fid duplicate."""
    from osgeo import ogr

    prob = blurred_rectangles(size=200, count=20)
    result = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions())
    assert len(result.geometries) > 3
    dataset = ogr.Open(str(write_buildings(result, tmp_path / "b.gpkg")))
    layer = dataset.GetLayer(0)
    definition = layer.GetLayerDefn()
    names = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
    assert names == list(BUILDING_FIELDS)
    assert layer.GetFIDColumn() == "fid"
    features = list(layer)
    assert [f.GetFID() for f in features] == list(range(1, len(result.geometries) + 1))
    assert [f.GetField("area_m2") for f in features] == [a["area_m2"] for a in result.attributes]


def test_write_other_formats(tmp_path):
    prob = np.zeros((100, 100), np.float32)
    prob[10:50, 10:50] = 1.0
    result = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions())
    for name in ("b.geojson", "b.fgb"):
        back = read_polygons(write_buildings(result, tmp_path / name))
        assert len(back.geometries) == 1 and back.attributes[0]["area_m2"] == pytest.approx(400)
    # Shapefile field names are cut to 10 characters; values must still land in the right fields.
    back = read_polygons(write_buildings(result, tmp_path / "b.shp"))
    assert back.attributes[0]["perimeter_"] == pytest.approx(80) and back.attributes[0]["area_m2"] == pytest.approx(400)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_real_labels_round_trip(shared_data):
    """SpaceNet 4 Atlanta labels, burned and blurred as a stand-in probability, come back as the same buildings."""
    import rasterio
    from rasterio.features import rasterize

    folder = shared_data / "eo" / "spacenet4_atlanta_pan"
    raster = sorted(folder.rglob("*.tif"))[0]
    with rasterio.open(raster) as dataset:
        crs_wkt, transform, shape = dataset.crs.to_wkt(), dataset.transform, (dataset.height, dataset.width)
        extent = shapely.box(*dataset.bounds)
    labels = read_polygons(folder / "labels.geojson", target_crs_wkt=crs_wkt).geometries
    burned = rasterize([(g, 1) for g in labels], out_shape=shape, transform=transform, dtype="uint8")
    prob = ndimage.gaussian_filter(burned.astype(np.float32), 1.0)
    result = polygonize_array(prob, transform, crs_wkt, PolygonOptions(block_size=300))  # 3 x 3 blocks
    truth = [g.intersection(extent) for g in labels if g.intersection(extent).area >= 20]
    scores, _ = score_polygons(result.geometries, truth)
    assert scores.f1 > 0.85, scores
    assert all(g.is_valid for g in result.geometries)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_reads_what_the_inference_writer_writes(tmp_path, dtype):
    """Contract with core/raster_io.ProbabilityWriter (the probability raster format in ARCHITECTURE.md)."""
    raster_io = pytest.importorskip("footprint_plugin.core.io.raster_io")
    prob = touching_pair()
    valid = np.ones(prob.shape[1:], bool)
    valid[:, :15] = False
    writer = raster_io.ProbabilityWriter(
        tmp_path / "p.tif",
        prob.shape[2],
        prob.shape[1],
        ["footprint", "boundary", "contact"],
        UTM,
        TRANSFORM,
        output_dtype=dtype,
    )
    writer.write_rows(prob, valid)
    writer.commit()
    result = polygonize_raster(tmp_path / "p.tif", PolygonOptions(block_size=64))
    expected = polygonize_array(np.where(valid, prob, np.nan), TRANSFORM, UTM, PolygonOptions())
    assert len(result.geometries) == len(expected.geometries) == 2
    scores, _ = score_polygons(result.geometries, expected.geometries, iou_threshold=0.95)
    assert scores.f1 == 1.0


def test_web_mercator_is_measured_on_the_ground():
    # 0.15 m Web Mercator pixels at 27.6 N are 0.133 m on the ground (Banepa's OAM tiles).
    scale = math.cos(math.radians(27.6))
    x, y = 9520000.0, 3200000.0  # about 85.5 E, 27.6 N in EPSG:3857
    transform = from_origin(x, y, 0.15, 0.15)
    prob = np.zeros((300, 300), np.float32)
    prob[50:250, 50:250] = 1.0  # 30 m x 30 m in Mercator units
    result = polygonize_array(prob, transform, "EPSG:3857", PolygonOptions())
    assert result.gsd_m == pytest.approx(0.15 * scale, rel=0.01)
    assert result.attributes[0]["area_m2"] == pytest.approx(900 * scale**2, rel=0.01)


def test_regularized_corners_are_right_angles_on_the_ground_in_lon_lat():
    # At 60 N a lon/lat pixel is half as wide as it is tall; squaring in pixel space would skew angles.
    transform = from_origin(10.0, 60.0, 1.0 / 55800.0, 0.5 / 111400.0)
    prob = np.zeros((200, 200), np.float32)
    rows, cols = np.mgrid[:200, :200]
    # A rectangle rotated 30 degrees on the ground (pixels: x stretched by 2).
    u = (cols - 100) * 1.0 * np.cos(np.radians(30)) + (rows - 100) * 0.5 * np.sin(np.radians(30))
    v = -(cols - 100) * 1.0 * np.sin(np.radians(30)) + (rows - 100) * 0.5 * np.cos(np.radians(30))
    prob[(np.abs(u) < 25) & (np.abs(v) < 15)] = 1.0
    result = polygonize_array(prob, transform, "EPSG:4326", PolygonOptions(regularize=True))
    assert result.attributes[0]["regularized"]
    from rasterio.warp import transform_geom

    ground = shapely.geometry.shape(
        transform_geom("EPSG:4326", "EPSG:32632", shapely.geometry.mapping(result.geometries[0]))
    )
    coords = np.asarray(ground.exterior.coords)[:-1]
    assert len(coords) == 4
    for i in range(4):
        a, b = coords[i - 1] - coords[i], coords[(i + 1) % 4] - coords[i]
        angle = math.degrees(math.acos(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)))
        assert angle == pytest.approx(90, abs=1.0)
    assert result.attributes[0]["area_m2"] == pytest.approx(50 * 30, rel=0.05)


# --------------------------------------------------------------------------- core.common.geometry


def test_geometry_helpers_polygonal_parts():
    from footprint_plugin.core.common.geometry import largest_polygon, polygonal_valid

    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    repaired = shapely.make_valid(bowtie)
    assert repaired.geom_type == "MultiPolygon"
    largest = largest_polygon(repaired)
    assert largest.geom_type == "Polygon" and largest.area == pytest.approx(25)
    mixed = shapely.GeometryCollection(
        [shapely.box(0, 0, 1, 1), shapely.box(5, 5, 8, 8), shapely.LineString([(0, 0), (9, 9)])]
    )
    assert largest_polygon(mixed).equals(shapely.box(5, 5, 8, 8))
    assert largest_polygon(shapely.LineString([(0, 0), (1, 1)])) is None
    assert largest_polygon(None) is None and largest_polygon(shapely.Polygon()) is None
    # polygonal_valid keeps every part (a reference MultiPolygon stays one feature) and says whether it fixed it.
    whole, fixed = polygonal_valid(bowtie)
    assert fixed and whole.geom_type == "MultiPolygon" and whole.area == pytest.approx(50)
    flat, fixed = polygonal_valid(shapely.Polygon([(0, 0, 5), (1, 0, 5), (1, 1, 5)]))
    assert not fixed and not flat.has_z
    assert polygonal_valid(mixed) == (shapely.union_all([shapely.box(0, 0, 1, 1), shapely.box(5, 5, 8, 8)]), True)
    assert polygonal_valid(shapely.Point(0, 0)) == (None, False)


def test_geometry_helpers_metric_crs():
    from rasterio.crs import CRS

    from footprint_plugin.core.common.geometry import crs_is_metric, is_mercator, metric_for, utm_crs_for, utm_zone_epsg

    assert utm_crs_for(32.58, 0.31) == "EPSG:32636"  # Kampala
    assert utm_crs_for(-84.39, 33.75) == "EPSG:32616"  # Atlanta
    assert utm_zone_epsg(151.2, -33.9) == 32756  # Sydney
    assert utm_zone_epsg(-180.0, 0.0) == 32601 and utm_zone_epsg(180.0, 0.0) == 32660  # clamped to zones 1..60
    assert is_mercator(CRS.from_epsg(3857)) and not is_mercator(CRS.from_epsg(32631))
    assert crs_is_metric(CRS.from_epsg(32631).to_wkt())
    assert not crs_is_metric("EPSG:4326") and not crs_is_metric("EPSG:3857") and not crs_is_metric(None)
    assert not crs_is_metric("EPSG:2229")  # California State Plane in US feet
    feet = metric_for("EPSG:2229", from_origin(6_000_000, 2_000_000, 1.0, 1.0), 100, 100)
    assert feet.gsd_m == pytest.approx(0.3048006, rel=1e-6)
