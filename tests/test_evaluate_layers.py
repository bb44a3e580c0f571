"""footprint:evaluatefootprints on every kind of layer a project holds: a temporary (memory) layer, a
GeoPackage, a Shapefile and a PostGIS table. Scores are the same, TP/FP/FN keep the predicted layer's
CRS, come out styled green/red/orange and load without "not correctly generated"."""

from __future__ import annotations

import pytest
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsProcessingFeedback,
    QgsProject,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

KAMPALA = "eo/hotosm_kampala"
COLOURS = {"True positives": "#2ca02c", "False positives": "#d62728", "False negatives (missed)": "#ff7f0e"}


@pytest.fixture(scope="module")
def provider(qgis_processing):
    from footprint_plugin.processing.provider import FootprintProvider

    registry = QgsApplication.processingRegistry()
    provider = FootprintProvider()
    assert registry.addProvider(provider)
    yield provider
    registry.removeProvider(provider)


@pytest.fixture
def reference(shared_data) -> QgsVectorLayer:
    layer = QgsVectorLayer(str(shared_data / KAMPALA / "labels.geojson"), "labels", "ogr")
    assert layer.isValid()
    return layer


def _predicted_memory(reference: QgsVectorLayer, crs: str = "EPSG:3857", keep_every: int = 2) -> QgsVectorLayer:
    """Every other reference building, in a projected CRS (3857, as Detect writes for Kampala)."""
    layer = QgsVectorLayer(f"MultiPolygon?crs={crs}&field=score:double", "Buildings — Kampala (test)", "memory")
    transform = QgsCoordinateTransform(
        reference.crs(), QgsCoordinateReferenceSystem(crs), QgsProject.instance().transformContext()
    )
    features = []
    for number, source in enumerate(reference.getFeatures()):
        if number % keep_every:
            continue
        geometry = source.geometry()
        geometry.transform(transform)
        geometry.convertToMultiType()
        feature = QgsFeature(layer.fields())
        feature.setGeometry(geometry)
        feature.setAttributes([0.9])
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)
    layer.updateExtents()
    return layer


def _save(layer: QgsVectorLayer, path, driver: str) -> QgsVectorLayer:
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = driver
    error = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, str(path), QgsProject.instance().transformContext(), options
    )
    assert error[0] == QgsVectorFileWriter.WriterError.NoError, error
    saved = QgsVectorLayer(str(path), "saved", "ogr")
    assert saved.isValid()
    return saved


def _evaluate_and_load(predicted: QgsVectorLayer, reference: QgsVectorLayer) -> tuple[dict, str, dict]:
    """The toolbox's own result handling (runAndLoadResults): scores, log, and the loaded layers by kind."""
    import processing

    project = QgsProject.instance()
    project.addMapLayers([predicted, reference])
    feedback = QgsProcessingFeedback()
    results = processing.runAndLoadResults(
        "footprint:evaluatefootprints",
        {
            "PREDICTED": predicted.id(),
            "REFERENCE": reference.id(),
            "TRUE_POSITIVES": "TEMPORARY_OUTPUT",
            "FALSE_POSITIVES": "TEMPORARY_OUTPUT",
            "FALSE_NEGATIVES": "TEMPORARY_OUTPUT",
        },
        feedback=feedback,
    )
    group = project.layerTreeRoot().findGroup(f"Evaluation — {predicted.name()}")
    assert group is not None, [g.name() for g in project.layerTreeRoot().findGroups()]
    loaded = {node.layer().name().split(" — ")[0]: node.layer() for node in group.findLayers()}
    return results, feedback.textLog(), loaded


def _check(results: dict, log: str, loaded: dict, predicted_crs: str, n_reference: int) -> None:
    assert "not correctly generated" not in log, log
    assert results["TP"] == (n_reference + 1) // 2 and results["FP"] == 0, results
    assert results["FN"] == n_reference - results["TP"]
    assert list(loaded) == list(COLOURS), list(loaded)
    for kind, layer in loaded.items():
        assert layer.crs().authid() == predicted_crs, (kind, layer.crs().authid())  # the layer's own CRS
        symbol = layer.renderer().symbol()
        assert layer.renderer().type() == "singleSymbol"
        assert symbol.symbolLayer(0).strokeColor().name() == COLOURS[kind], kind
    assert loaded["True positives"].featureCount() == results["TP"]
    assert loaded["False negatives (missed)"].featureCount() == results["FN"]


@pytest.mark.parametrize("kind", ["memory", "gpkg", "shapefile"])
def test_evaluate_on_memory_geopackage_and_shapefile(provider, reference, tmp_path, qgis_new_project, kind):
    predicted = _predicted_memory(reference)
    if kind == "gpkg":
        predicted = _save(predicted, tmp_path / "predicted.gpkg", "GPKG")
    elif kind == "shapefile":
        predicted = _save(predicted, tmp_path / "predicted.shp", "ESRI Shapefile")
    predicted.setName(f"Buildings — {kind}")
    results, log, loaded = _evaluate_and_load(predicted, reference)
    _check(results, log, loaded, "EPSG:3857", reference.featureCount())


def test_evaluate_keeps_a_utm_layers_crs(provider, reference, qgis_new_project):
    predicted = _predicted_memory(reference, crs="EPSG:32636")
    results, log, loaded = _evaluate_and_load(predicted, reference)
    _check(results, log, loaded, "EPSG:32636", reference.featureCount())


def test_evaluate_on_a_postgis_table(provider, reference, tmp_path, qgis_new_project):
    import processing

    from tests import postgis_server

    server, why = postgis_server.start()
    if server is None:
        pytest.skip(f"no local PostGIS: {why}")
    try:
        memory = _predicted_memory(reference)
        table = f'{server.uri} table="public"."predicted" (geom)'
        processing.run("native:savefeatures", {"INPUT": memory, "OUTPUT": f"postgres:{table}"})
        predicted = QgsVectorLayer(table, "Buildings — postgis", "postgres")
        assert predicted.isValid() and predicted.featureCount() == memory.featureCount()
        results, log, loaded = _evaluate_and_load(predicted, reference)
        _check(results, log, loaded, "EPSG:3857", reference.featureCount())
    finally:
        QgsProject.instance().removeAllMapLayers()
        server.stop()
