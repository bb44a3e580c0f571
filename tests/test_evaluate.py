"""SpaceNet object scoring, pixel scores and file evaluation (reprojection, AOI clipping, layers, report)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from footprint_plugin.core.common.errors import InputError
from footprint_plugin.core.io.vector_io import read_polygons, write_polygons
from footprint_plugin.core.vectors.evaluate import evaluate_files, pixel_scores, score_polygons

UTM31 = "EPSG:32631"


def squares(origins, size=10.0):
    return [shapely.box(x, y, x + size, y + size) for x, y in origins]


def test_known_answer_from_solaris(shared_data):
    fixtures = shared_data / "eval_fixtures"
    predicted = read_polygons(fixtures / "pred.geojson").geometries
    truth = read_polygons(fixtures / "gt.geojson").geometries
    scores, matches = score_polygons(predicted, truth)
    assert (scores.tp, scores.fp, scores.fn) == (8, 20, 20)
    assert scores.f1 == pytest.approx(0.2857, abs=1e-4)
    assert scores.precision == pytest.approx(0.2857, abs=1e-4)
    assert len(matches) == 8 and all(m.iou >= 0.5 for m in matches)


def test_known_answer_through_files(shared_data, tmp_path):
    fixtures = shared_data / "eval_fixtures"
    result = evaluate_files(
        fixtures / "pred.geojson",
        fixtures / "gt.geojson",
        out_layers=tmp_path / "l.gpkg",
        report_json=tmp_path / "r.json",
    )
    assert (result.scores.tp, result.scores.fp, result.scores.fn) == (8, 20, 20)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["scores"]["f1"] == pytest.approx(0.2857, abs=1e-4)
    assert len(read_polygons(tmp_path / "l.gpkg", layer="true_positives").geometries) == 8
    assert len(read_polygons(tmp_path / "l.gpkg", layer="false_positives").geometries) == 20
    assert len(read_polygons(tmp_path / "l.gpkg", layer="false_negatives").geometries) == 20


def test_perfect_and_empty():
    truth = squares([(0, 0), (20, 0), (40, 0)])
    scores, _ = score_polygons(truth, truth)
    assert (scores.tp, scores.fp, scores.fn, scores.f1, scores.mean_iou) == (3, 0, 0, 1.0, 1.0)
    scores, _ = score_polygons([], truth)
    assert (scores.tp, scores.fn, scores.f1) == (0, 3, 0.0)
    scores, _ = score_polygons(truth, [])
    assert (scores.fp, scores.precision) == (3, 0.0)


def test_matching_is_one_to_one_and_needs_half_iou():
    truth = squares([(0, 0)])
    # Both predictions overlap the one building well; only the first may take it.
    predicted = squares([(1, 0), (0, 1)])
    scores, matches = score_polygons(predicted, truth)
    assert (scores.tp, scores.fp, scores.fn) == (1, 1, 0)
    assert matches[0].pred == 0
    # IoU of a square shifted by a third of its side: 6.67/13.33 = 0.5 exactly at 10/3.
    shifted = squares([(5, 0)])  # IoU 50/150 = 0.333
    scores, _ = score_polygons(shifted, truth)
    assert scores.tp == 0 and scores.fp == 1 and scores.fn == 1


def test_prediction_takes_its_best_unmatched_ground_truth():
    truth = squares([(0, 0), (8, 0)])  # overlapping ground truth polygons
    predicted = squares([(7, 0), (0, 0)])
    scores, matches = score_polygons(predicted, truth)
    assert scores.tp == 2
    assert {(m.pred, m.gt) for m in matches} == {(0, 1), (1, 0)}


def test_scores_order_predictions():
    truth = squares([(0, 0)])
    predicted = squares([(1, 0), (0, 0.5)])
    _, matches = score_polygons(predicted, truth, pred_scores=[0.2, 0.9])
    assert matches[0].pred == 1


def test_pixel_scores():
    pred = np.zeros((10, 10), bool)
    gt = np.zeros((10, 10), bool)
    pred[:5] = True
    gt[2:7] = True
    result = pixel_scores(pred, gt)
    assert result["iou"] == pytest.approx(30 / 70)
    assert result["dice"] == pytest.approx(60 / 100)
    valid = np.zeros((10, 10), bool)
    valid[2:5] = True
    assert pixel_scores(pred, gt, valid)["iou"] == 1.0
    assert pixel_scores(np.zeros((3, 3)), np.zeros((3, 3)))["iou"] == 1.0
    with pytest.raises(InputError):
        pixel_scores(np.zeros((3, 3)), np.zeros((4, 4)))


def _to_wgs84(geoms):
    from rasterio.warp import transform_geom

    return [
        shapely.geometry.shape(g)
        for g in transform_geom(UTM31, "EPSG:4326", [shapely.geometry.mapping(g) for g in geoms])
    ]


def test_files_in_different_crs_with_aoi_and_min_area(tmp_path):
    x0, y0 = 600000.0, 5750000.0
    truth = squares([(x0 + 20 * i, y0) for i in range(5)]) + [shapely.box(x0, y0 + 50, x0 + 3, y0 + 53)]  # 9 m² speck
    predicted = squares([(x0 + 20 * i + 0.5, y0) for i in range(4)])  # misses the fifth
    write_polygons(tmp_path / "gt.gpkg", truth, [{"n": i} for i in range(len(truth))], UTM31)
    # Predictions stored in lon/lat: the evaluator must bring both into one metric CRS.
    write_polygons(tmp_path / "pred.geojson", _to_wgs84(predicted), [{"score": 0.9}] * 4, "EPSG:4326")
    result = evaluate_files(tmp_path / "pred.geojson", tmp_path / "gt.gpkg", min_area_m2=20.0)
    assert (result.scores.tp, result.scores.fp, result.scores.fn) == (4, 0, 1)
    assert "UTM zone 31N" in result.crs_wkt
    assert result.pixel["iou"] == pytest.approx(380 / 520, abs=0.01)
    # AOI covering the first three buildings only, and cutting the third in half.
    aoi = shapely.box(x0 - 5, y0 - 5, x0 + 45, y0 + 15)
    write_polygons(tmp_path / "aoi.gpkg", [aoi], [{}], UTM31)
    result = evaluate_files(
        tmp_path / "pred.geojson",
        tmp_path / "gt.gpkg",
        aoi_path=tmp_path / "aoi.gpkg",
        min_area_m2=20.0,
        report_json=tmp_path / "r.json",
    )
    assert (result.scores.tp, result.scores.fp, result.scores.fn) == (3, 0, 0)
    assert json.loads((tmp_path / "r.json").read_text())["n_ground_truth"] == 3


def test_raster_extent_clips_and_gives_pixel_scores(tmp_path, make_geotiff):
    raster = make_geotiff(np.zeros((1, 100, 100), np.uint8))  # 50 m x 50 m at (600000, 5750000) top-left
    x0, top = 600000.0, 5750000.0
    truth = squares([(x0 + 5, top - 20), (x0 + 30, top - 20), (x0 + 200, top - 20)])  # third is outside
    write_polygons(tmp_path / "gt.gpkg", truth, [{}] * 3, UTM31)
    write_polygons(tmp_path / "pred.gpkg", truth[:2], [{}] * 2, UTM31)
    result = evaluate_files(tmp_path / "pred.gpkg", tmp_path / "gt.gpkg", raster_path=raster)
    assert (result.scores.tp, result.scores.fp, result.scores.fn) == (2, 0, 0)
    assert result.pixel_method == "raster" and result.pixel["iou"] == 1.0


def test_qgis_layer_uris_pick_the_named_layer(tmp_path):
    truth = squares([(600000 + 20 * i, 5750000) for i in range(3)])
    write_polygons(
        tmp_path / "both.gpkg", truth[:1], [{}], UTM31, layer_name="pred", extra_layers=[("gt", truth, [{}] * 3)]
    )
    result = evaluate_files(f"{tmp_path / 'both.gpkg'}|layername=pred", f"{tmp_path / 'both.gpkg'}|layername=gt")
    assert (result.scores.tp, result.scores.fp, result.scores.fn) == (1, 0, 2)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        evaluate_files(tmp_path / "nope.gpkg", tmp_path / "nope2.gpkg")
