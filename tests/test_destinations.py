"""The Detect dialog's code path (QGIS's destination widgets -> parameters -> task -> results loaded) for every
output kind, a real local PostGIS included, and the area choices (entire layer, map extent, features, selection)."""

from __future__ import annotations

from pathlib import Path

import pytest
from qgis.core import QgsFeature, QgsGeometry, QgsProject, QgsRasterLayer, QgsRectangle, QgsVectorLayer

from tests.qgis_helpers import wait_until

KAMPALA_TILES = "eo/hotosm_kampala/tiles"


@pytest.fixture(scope="module")
def postgis():
    from tests import postgis_server

    server, why = postgis_server.start()
    if server is None:
        pytest.skip(f"no local PostGIS for the database-table destination: {why}")
    yield server
    server.stop()


@pytest.fixture
def raster(shared_data, qgis_iface) -> QgsRasterLayer:
    path = sorted((shared_data / KAMPALA_TILES).glob("OAM-*-19.tif"))[0]
    layer = QgsRasterLayer(str(path), "kampala")
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    return layer


def _run_dialog(plugin, buildings, probability="TEMPORARY_OUTPUT", area=None, mask=None):
    plugin.detect_action.trigger()
    dialog = plugin._dialogs["detect"]
    dialog.modelCombo.setCurrentIndex(dialog.modelCombo.findData("tiny_test_model"))
    dialog.thresholdSpin.setValue(0.01)  # random weights: a low threshold guarantees polygons
    dialog.minAreaSpin.setValue(1.0)
    dialog.deviceCombo.setCurrentText("cpu")
    dialog.set_destinations(buildings, probability)
    if area is not None:
        dialog.set_area(area, mask)
    dialog.accept()
    assert dialog.result(), dialog.errorLabel.text()
    run = plugin.last_run
    assert run is not None and wait_until(lambda: run.done, limit_s=300), "task never finished"
    assert run.succeeded, run.error_text()
    return run


def _result_layers(run) -> dict[str, object]:
    # Layer names say input and model after a dash ("Buildings — kampala (model v1)"): key by the kind.
    return {layer.name().split(" — ")[0]: layer for layer in run.loaded}


def _file_kinds(tmp_path: Path) -> list[tuple[str, str, str]]:
    return [
        ("temporary layer", "TEMPORARY_OUTPUT", "memory"),
        ("GeoPackage", str(tmp_path / "b.gpkg"), "ogr"),
        ("Shapefile", str(tmp_path / "b.shp"), "ogr"),
        ("FlatGeobuf", str(tmp_path / "b.fgb"), "ogr"),
        ("GeoJSON", str(tmp_path / "b.geojson"), "ogr"),
        ("GeoPackage table", f"ogr:dbname='{tmp_path / 'db.gpkg'}' table=\"buildings\" (geom)", "ogr"),
    ]


def test_every_file_destination_is_added_to_the_project(plugin, raster, tmp_path):
    for kind, destination, provider in _file_kinds(tmp_path):
        run = _run_dialog(plugin, destination)
        layers = _result_layers(run)
        assert set(layers) == {"Buildings", "Building probability"}, (kind, layers)
        buildings = layers["Buildings"]
        assert QgsProject.instance().mapLayer(buildings.id()) is buildings, kind
        assert buildings.providerType() == provider and buildings.isValid(), kind
        assert buildings.featureCount() == run.results["N_BUILDINGS"] > 0, kind
    # Six runs, six groups, each with its own name.
    groups = [g.name() for g in QgsProject.instance().layerTreeRoot().findGroups()]
    assert groups[:6] == ["kampala (6)", "kampala (5)", "kampala (4)", "kampala (3)", "kampala (2)", "kampala"]


def test_probability_to_a_chosen_file(plugin, raster, tmp_path):
    run = _run_dialog(plugin, "TEMPORARY_OUTPUT", str(tmp_path / "probability.tif"))
    probability = _result_layers(run)["Building probability"]
    assert Path(probability.source()) == tmp_path / "probability.tif"
    assert probability.renderer().type() == "singlebandpseudocolor"


def test_postgis_table_destination(plugin, raster, postgis):
    destination = f'postgres:{postgis.uri} table="public"."buildings" (geom)'
    run = _run_dialog(plugin, destination)
    buildings = _result_layers(run)["Buildings"]
    assert buildings.providerType() == "postgres" and buildings.isValid()
    assert buildings.featureCount() == run.results["N_BUILDINGS"] > 0
    reread = QgsVectorLayer(f'{postgis.uri} table="public"."buildings" (geom)', "again", "postgres")
    assert reread.featureCount() == buildings.featureCount()
    assert buildings.renderer().type() == "singleSymbol"  # styled like the others


def _polygon_layer(raster: QgsRasterLayer, parts: list[QgsRectangle]) -> QgsVectorLayer:
    layer = QgsVectorLayer(f"Polygon?crs={raster.crs().authid()}", "area", "memory")
    features = []
    for part in parts:
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromRect(part))
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    layer.updateExtents()
    QgsProject.instance().addMapLayer(layer)
    return layer


def _quarters(extent: QgsRectangle) -> tuple[QgsRectangle, QgsRectangle]:
    c = extent.center()
    return (
        QgsRectangle(extent.xMinimum(), c.y(), c.x(), extent.yMaximum()),  # north-west
        QgsRectangle(c.x(), extent.yMinimum(), extent.xMaximum(), c.y()),  # south-east
    )


def test_area_choices_limit_where_it_looks(plugin, raster, qgis_iface):
    from building_footprints.footprint_plugin.gui.detect_dialog import (
        AREA_CANVAS,
        AREA_ENTIRE,
        AREA_FEATURES,
        AREA_SELECTED,
    )

    full = raster.extent()
    north_west, south_east = _quarters(full)

    def probability_extent(run) -> QgsRectangle:
        return _result_layers(run)["Building probability"].extent()

    entire = probability_extent(_run_dialog(plugin, "TEMPORARY_OUTPUT", area=AREA_ENTIRE))
    assert entire == full

    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(raster.crs())
    canvas.resize(400, 400)
    canvas.setExtent(north_west)
    canvas.refresh()
    # Let the canvas finish drawing the raster before a run reads the same layer on a worker thread.
    canvas.waitWhileRendering()
    in_view = probability_extent(_run_dialog(plugin, "TEMPORARY_OUTPUT", area=AREA_CANVAS))
    assert full.contains(in_view) and in_view.area() < 0.6 * full.area()
    assert in_view.intersects(north_west) and not in_view.contains(south_east.center())

    mask = _polygon_layer(raster, [north_west, south_east])
    both = probability_extent(_run_dialog(plugin, "TEMPORARY_OUTPUT", area=AREA_FEATURES, mask=mask))
    assert both.width() == pytest.approx(full.width(), rel=0.02)
    mask.selectByIds([next(mask.getFeatures()).id()])
    selected_run = _run_dialog(plugin, "TEMPORARY_OUTPUT", area=AREA_SELECTED, mask=mask)
    selected = probability_extent(selected_run)
    assert selected.width() == pytest.approx(north_west.width(), rel=0.05)
    for feature in _result_layers(selected_run)["Buildings"].getFeatures():
        assert feature.geometry().boundingBox().intersects(north_west)


def test_selected_area_without_selection_keeps_the_dialog_open(plugin, raster):
    from building_footprints.footprint_plugin.gui.detect_dialog import AREA_SELECTED

    mask = _polygon_layer(raster, [raster.extent()])
    plugin.detect_action.trigger()
    dialog = plugin._dialogs["detect"]
    dialog.set_area(AREA_SELECTED, mask)
    dialog.accept()
    assert dialog.isVisible() and "selected" in dialog.errorLabel.text()


def test_processing_layername_destination_adds_that_layer_and_keeps_the_others(provider, tmp_path):
    """OUTPUT='b.gpkg|layername=x' is layer x in b.gpkg (not a file named 'b.gpkg|layername=x.gpkg')."""
    import processing
    import shapely

    from footprint_plugin.core.io.paths import container_layers
    from footprint_plugin.core.io.vector_io import write_polygons

    boxes = [shapely.box(600000, 5750000, 600010, 5750010)]
    write_polygons(tmp_path / "pred.gpkg", boxes, [{"score": 0.9}], "EPSG:32631")
    write_polygons(tmp_path / "b.gpkg", boxes, [{"kind": "road"}], "EPSG:32631", layer_name="roads")
    results = processing.run(
        "footprint:evaluatefootprints",
        {
            "PREDICTED": str(tmp_path / "pred.gpkg"),
            "REFERENCE": str(tmp_path / "pred.gpkg"),
            "TRUE_POSITIVES": f"{tmp_path / 'b.gpkg'}|layername=x",
        },
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gpkg", "pred.gpkg"]
    assert {"roads", "x"} <= set(container_layers(tmp_path / "b.gpkg"))
    assert QgsVectorLayer(results["TRUE_POSITIVES"], "tp", "ogr").featureCount() == 1


def test_writing_into_an_existing_geopackage_keeps_its_other_layers(tmp_path):
    import shapely

    from footprint_plugin.core.io.paths import container_layers
    from footprint_plugin.core.io.vector_io import read_polygons, write_polygons

    box = shapely.box(0, 0, 1, 1)
    write_polygons(tmp_path / "multi.gpkg", [box], [{"a": 1}], "EPSG:32631", layer_name="roads")
    for count in (3, 2):  # the second write replaces `buildings` only
        write_polygons(tmp_path / "multi.gpkg", [box] * count, [{"a": 1}] * count, "EPSG:32631", layer_name="buildings")
    assert container_layers(tmp_path / "multi.gpkg") == ["roads", "buildings"]
    assert len(read_polygons(tmp_path / "multi.gpkg", layer="buildings").geometries) == 2
    assert len(read_polygons(tmp_path / "multi.gpkg", layer="roads").geometries) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["multi.gpkg"]
