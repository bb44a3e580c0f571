"""Every footprint: algorithm through processing.run in real QGIS, on small real rasters and polygons."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsProcessingException, QgsRasterLayer, QgsVectorLayer

# One key only (issue 12): the GeoPackage fid numbers the buildings; there is no separate "id" field.
BUILDING_FIELDS = ["score", "area_m2", "perimeter_m", "compactness", "regularized", "source", "model"]
KAMPALA = "eo/hotosm_kampala"


@pytest.fixture
def kampala_tiles(shared_data) -> list[Path]:
    return sorted((shared_data / KAMPALA / "tiles").glob("OAM-*-19.tif"))[:2]


def run(algorithm_id: str, parameters: dict):
    import processing

    return processing.run(algorithm_id, parameters)


def test_detect_buildings_writes_polygons_and_probability(provider, tiny_model, kampala_tiles, tmp_path):
    raster = kampala_tiles[0]
    # Random weights: a very low threshold makes sure polygons come out, so fields and CRS can be checked.
    results = run(
        "footprint:detectbuildings",
        {
            "INPUT": str(raster),
            "MODEL": tiny_model,
            "DEVICE": "cpu",
            "THRESHOLD": 0.01,
            "MIN_AREA": 1.0,
            "OUTPUT": str(tmp_path / "buildings.gpkg"),
            "PROBABILITY": str(tmp_path / "probability.tif"),
        },
    )
    source = QgsRasterLayer(str(raster), "in")
    buildings = QgsVectorLayer(str(results["OUTPUT"]), "b", "ogr")
    assert buildings.isValid()
    assert buildings.fields().names() == ["fid", *BUILDING_FIELDS]
    assert buildings.crs() == source.crs()
    assert buildings.featureCount() == results["N_BUILDINGS"] > 0
    feature = next(buildings.getFeatures())
    assert feature["source"] == raster.name and feature["model"].startswith(tiny_model)
    assert feature["area_m2"] > 0 and feature.geometry().isGeosValid()
    probability = QgsRasterLayer(results["PROBABILITY"], "p")
    assert probability.isValid() and probability.crs() == source.crs()
    assert (probability.width(), probability.height()) == (source.width(), source.height())
    assert results["MP_PER_S"] > 0 and "cpu" in results["DEVICE_USED"].lower()


def test_detect_buildings_to_memory_layer_with_extent(provider, tiny_model, kampala_tiles, tmp_path):
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    source = QgsRasterLayer(str(kampala_tiles[0]), "in")
    extent = source.extent()
    half = (
        f"{extent.xMinimum()},{extent.center().x()},{extent.yMinimum()},{extent.center().y()} [{source.crs().authid()}]"
    )
    context = QgsProcessingContext()
    results = processing.run(
        "footprint:detectbuildings",
        {
            "INPUT": source,
            "MODEL": tiny_model,
            "THRESHOLD": 0.01,
            "MIN_AREA": 1.0,
            "EXTENT": half,
            "OUTPUT": "TEMPORARY_OUTPUT",
            "PROBABILITY": str(tmp_path / "p.tif"),
        },
        context=context,
        feedback=QgsProcessingFeedback(),
    )
    layer = results["OUTPUT"]
    layer = layer if isinstance(layer, QgsVectorLayer) else context.getMapLayer(layer)
    assert layer.isValid() and layer.featureCount() > 0
    probability = QgsRasterLayer(results["PROBABILITY"], "p")
    assert probability.width() < source.width() and probability.height() < source.height()
    assert source.extent().contains(probability.extent().buffered(-1e-6))


def test_detect_buildings_user_error_says_how_to_fix(provider, tiny_model, make_geotiff, tmp_path):
    two_bands = make_geotiff(np.full((2, 64, 64), 100, np.uint8), name="two_bands.tif")  # the model wants 3
    with pytest.raises(QgsProcessingException) as error:
        run(
            "footprint:detectbuildings",
            {"INPUT": str(two_bands), "MODEL": tiny_model, "OUTPUT": str(tmp_path / "b.gpkg")},
        )
    assert "band" in str(error.value).lower()
    assert not (tmp_path / "b.gpkg").exists()


def test_batch_detect_skips_a_corrupt_tile(provider, tiny_model, kampala_tiles, tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for tile in kampala_tiles:
        shutil.copy(tile, folder / tile.name)
    (folder / "broken.tif").write_bytes(b"II*\x00 this is not really a GeoTIFF")
    results = run(
        "footprint:batchdetect",
        {
            "FOLDER": str(folder),
            "PATTERN": "*.tif",
            "MODEL": tiny_model,
            "THRESHOLD": 0.01,
            "MIN_AREA": 1.0,
            "OUTPUT": str(tmp_path / "merged.gpkg"),
            "PROBABILITY_FOLDER": str(tmp_path / "prob"),
        },
    )
    assert results["N_TILES"] == 2 and results["N_SKIPPED"] == 1
    assert "broken.tif" in results["SKIPPED"]
    merged = QgsVectorLayer(str(results["OUTPUT"]), "m", "ogr")
    assert merged.isValid() and "tile" in merged.fields().names()
    assert {f["tile"] for f in merged.getFeatures()} == {t.stem for t in kampala_tiles}
    assert sorted(p.name for p in (tmp_path / "prob").iterdir()) == sorted(
        f"{t.stem}_probability.tif" for t in kampala_tiles
    )


def test_batch_detect_refuses_outputs_over_input_tiles_before_any_work(provider, tiny_model, make_geotiff, tmp_path):
    tile = make_geotiff(np.full((3, 64, 64), 100, np.uint8), name="a.tif")
    other = make_geotiff(np.full((3, 64, 64), 90, np.uint8), name="a_probability.tif")  # what "a.tif" would write
    before = tile.read_bytes(), other.read_bytes()
    prob_folder = tmp_path / "elsewhere"
    prob_folder.mkdir()
    with pytest.raises(QgsProcessingException, match="input tile a_probability.tif"):
        # The probability rasters would go into the tiles' own folder: a_probability.tif is an input.
        run(
            "footprint:batchdetect",
            {
                "RASTERS": [str(tile), str(other)],
                "MODEL": tiny_model,
                "OUTPUT": str(tmp_path / "b.gpkg"),
                "PROBABILITY_FOLDER": str(tmp_path),
            },
        )
    assert (tile.read_bytes(), other.read_bytes()) == before
    assert not (tmp_path / "b.gpkg").exists()


def test_batch_detect_cancel_leaves_no_output_and_resume_continues(provider, tiny_model, tmp_path):
    import processing
    from qgis.core import QgsProcessingFeedback
    from rasterio.transform import from_origin

    from tests.conftest import synthetic_buildings, write_geotiff

    folder = tmp_path / "tiles"
    folder.mkdir()
    image, _mask = synthetic_buildings(512, seed=2)
    for c in range(2):  # two touching tiles: one mosaic of 2 blocks
        write_geotiff(
            folder / f"t{c}.tif",
            image[:, :256, c * 256 : (c + 1) * 256],
            transform=from_origin(600000.0 + c * 128.0, 5750000.0, 0.5, 0.5),
        )
    parameters = {
        "FOLDER": str(folder),
        "MODEL": tiny_model,
        "DEVICE": "cpu",
        "THRESHOLD": 0.01,
        "MIN_AREA": 1.0,
        "OUTPUT": str(tmp_path / "b.gpkg"),
        "JOB_FOLDER": str(tmp_path / "job"),
        "BLOCK_SIZE": 128,
        "WORKERS": 0,
    }
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda percent: feedback.cancel() if percent > 10 else None)
    with pytest.raises(QgsProcessingException, match="Resume"):
        processing.run("footprint:batchdetect", parameters, feedback=feedback)
    assert not (tmp_path / "b.gpkg").exists()
    assert len(list((tmp_path / "job" / "blocks").glob("*.tif"))) == 1
    feedback = QgsProcessingFeedback()
    results = processing.run("footprint:batchdetect", {**parameters, "RESUME": True}, feedback=feedback)
    assert results["N_TILES"] == 2 and results["N_BUILDINGS"] > 0
    layer = QgsVectorLayer(str(results["OUTPUT"]), "b", "ogr")
    tiles = {f["tile"] for f in layer.getFeatures()}
    count = layer.featureCount()
    del layer  # a layer still open when QGIS exits crashes the interpreter at shutdown
    assert count == results["N_BUILDINGS"] and tiles <= {"t0", "t1"}


def test_evaluate_known_answer(provider, shared_data, tmp_path):
    fixtures = shared_data / "eval_fixtures"
    results = run(
        "footprint:evaluatefootprints",
        {
            "PREDICTED": str(fixtures / "pred.geojson"),
            "REFERENCE": str(fixtures / "gt.geojson"),
            "TRUE_POSITIVES": str(tmp_path / "tp.gpkg"),
            "FALSE_POSITIVES": str(tmp_path / "fp.gpkg"),
            "FALSE_NEGATIVES": str(tmp_path / "fn.gpkg"),
            "REPORT": str(tmp_path / "report.json"),
        },
    )
    assert (results["TP"], results["FP"], results["FN"]) == (8, 20, 20)
    assert results["F1"] == pytest.approx(0.2857, abs=1e-4)
    for name, count in (("tp", 8), ("fp", 20), ("fn", 20)):
        layer = QgsVectorLayer(str(tmp_path / f"{name}.gpkg"), name, "ogr")
        assert layer.isValid() and layer.featureCount() == count and layer.crs().authid() == "EPSG:32616"
    assert (tmp_path / "report.json").is_file()


def test_regularize_footprints(provider, shared_data, tmp_path):
    source = QgsVectorLayer(str(shared_data / "eval_fixtures" / "gt.geojson"), "gt", "ogr")
    results = run(
        "footprint:regularizefootprints",
        {"INPUT": source, "TOLERANCE": 0.5, "OUTPUT": str(tmp_path / "square.gpkg")},
    )
    out = QgsVectorLayer(str(results["OUTPUT"]), "sq", "ogr")
    assert out.isValid() and out.featureCount() == source.featureCount()
    assert out.crs() == source.crs()
    assert set(source.fields().names()) <= set(out.fields().names()) | {"fid"}
    assert results["N_REGULARIZED"] == sum(1 for f in out.getFeatures() if f["regularized"]) > 0
    assert all(f.geometry().isGeosValid() for f in out.getFeatures())


@pytest.mark.slow
def test_train_then_finetune(provider, tiny_model, shared_data, kampala_tiles, tmp_path):
    labels = shared_data / KAMPALA / "labels.geojson"
    common = {
        "INPUT": [str(t) for t in kampala_tiles],
        "BUILDINGS": str(labels),
        "EPOCHS": 1,
        "DEVICE": "cpu",
        "BATCH_SIZE": 2,
        "CHIP_SIZE": 128,
    }
    trained = run("footprint:trainmodel", {**common, "ARCHITECTURE": "unet_mobilenetv2", "NAME": "trained_in_test"})
    card = Path(trained["MODEL_CARD"])
    assert card.is_file() and card.parent == Path(tiny_model_dir_of(tiny_model))
    assert Path(trained["REPORT"]).is_file() and "trained_in_test" == trained["MODEL_NAME"]
    tuned = run(
        "footprint:finetunemodel",
        {**common, "BASE_MODEL": "trained_in_test", "NAME": "tuned_in_test", "AUGMENTATION": "robust"},
    )
    assert Path(tuned["MODEL_CARD"]).is_file()
    from footprint_plugin.core.zoo.modelcard import find_model

    tuned_card = find_model("tuned_in_test")
    assert tuned_card.architecture == "unet_mobilenetv2" and tuned_card.extra["training"]["augmentation"] == "robust"


def tiny_model_dir_of(_name: str) -> str:
    import os

    return os.environ["FOOTPRINT_USER_MODELS"]


def test_regularize_geographic_layer_keeps_crs_and_size(provider, shared_data, tmp_path):
    from qgis.core import QgsDistanceArea, QgsProject

    source = QgsVectorLayer(str(shared_data / KAMPALA / "labels.geojson"), "osm", "ogr")
    results = run("footprint:regularizefootprints", {"INPUT": source, "OUTPUT": str(tmp_path / "sq.gpkg")})
    out = QgsVectorLayer(str(results["OUTPUT"]), "sq", "ogr")
    assert out.crs().authid() == "EPSG:4326" and out.featureCount() == source.featureCount()
    measure = QgsDistanceArea()
    measure.setEllipsoid("WGS84")
    measure.setSourceCrs(source.crs(), QgsProject.instance().transformContext())
    before = sum(measure.measureArea(f.geometry()) for f in source.getFeatures())
    after = sum(measure.measureArea(f.geometry()) for f in out.getFeatures())
    assert after == pytest.approx(before, rel=0.1) and results["N_REGULARIZED"] > 0


def test_building_tables_have_one_key_in_geopackage_and_postgis(provider, tiny_model, kampala_tiles, tmp_path):
    """Issue 12: one key field (the table's own: fid in GeoPackage, id in PostGIS), never id + fid or id_0."""
    from tests import postgis_server

    server, why = postgis_server.start()
    if server is None:
        pytest.skip(f"no local PostGIS: {why}")
    try:
        common = {
            "INPUT": str(kampala_tiles[0]),
            "MODEL": tiny_model,
            "DEVICE": "cpu",
            "THRESHOLD": 0.01,
            "MIN_AREA": 1.0,
        }
        table = f'{server.uri} table="public"."buildings" (geom)'
        results = run("footprint:detectbuildings", {**common, "OUTPUT": f"postgres:{table}"})
        postgis = QgsVectorLayer(table, "pg", "postgres")
        assert postgis.isValid() and postgis.featureCount() == results["N_BUILDINGS"] > 0
        assert postgis.fields().names() == ["id", *BUILDING_FIELDS]
        assert [postgis.fields().at(i).name() for i in postgis.primaryKeyAttributes()] == ["id"]
        gpkg = run("footprint:detectbuildings", {**common, "OUTPUT": str(tmp_path / "b.gpkg")})["OUTPUT"]
        numbers = [f["fid"] for f in QgsVectorLayer(str(gpkg), "g", "ogr").getFeatures()]
        assert numbers == list(range(1, results["N_BUILDINGS"] + 1))
    finally:
        server.stop()
