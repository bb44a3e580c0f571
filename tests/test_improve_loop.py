"""The guided loop in real QGIS (offscreen): Detect, suggest cells, a Corrections layer, a short fine-tune,
Detect again with the new model; every heavy step runs as our Processing algorithm in the task manager."""

from __future__ import annotations

from qgis.core import QgsFeature, QgsGeometry, QgsProject, QgsRasterLayer

from footprint_plugin.core.io.vector_io import read_polygons
from tests.qgis_helpers import wait_until


def test_improve_for_this_area_runs_the_whole_loop(plugin, qgis_iface, shared_data, tmp_path):
    kampala = shared_data / "eo" / "hotosm_kampala"
    tile = sorted((kampala / "tiles").glob("OAM-*-19.tif"))[0]
    layer = QgsRasterLayer(str(tile), "imagery")
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    plugin.show_improve_dialog()  # before any Detect run: a message, no dialog
    assert "improve" not in plugin._dialogs
    plugin.show_detect_dialog()
    detect = plugin._dialogs["detect"]
    detect.modelCombo.setCurrentIndex(detect.modelCombo.findData("tiny_test_model"))
    detect.thresholdSpin.setValue(0.01)
    detect.minAreaSpin.setValue(1.0)
    detect.ttaCheck.setChecked(False)
    detect.deviceCombo.setCurrentText("cpu")
    detect.set_destinations(str(tmp_path / "buildings.gpkg"), str(tmp_path / "probability.tif"))
    run = plugin.start_detection(detect)
    assert run is not None and wait_until(lambda: run.done) and run.succeeded

    plugin.show_improve_dialog()
    dialog = plugin._dialogs["improve"]
    dialog.cellsSpin.setValue(3)
    dialog.cellSizeSpin.setValue(30.0)
    dialog.budgetSpin.setValue(0.2)
    step = dialog.suggest()
    assert step is not None and wait_until(lambda: step.done) and step.succeeded, dialog.statusLabel.text()
    assert dialog.counts["cells"] == 3
    cells = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name().startswith("Where to digitize")]
    assert cells and cells[0].renderer().classAttribute() == "rank"

    corrections = dialog.open_corrections()
    assert corrections is not None and corrections.isEditable() and corrections.name() == "Corrections"
    # The user's review: every pre-filled (random-model) outline goes, the real buildings in the cells come in.
    corrections.deleteFeatures([f.id() for f in corrections.getFeatures()])
    truth = read_polygons(kampala / "labels.geojson", target_crs_wkt=corrections.crs().toWkt()).geometries
    cell_geometries = [QgsGeometry(f.geometry()) for f in cells[0].getFeatures()]
    added = 0
    for polygon in truth:
        geometry = QgsGeometry.fromWkt(polygon.wkt)
        if any(geometry.centroid().within(cell) for cell in cell_geometries):
            feature = QgsFeature(corrections.fields())
            feature.setGeometry(geometry)
            corrections.addFeature(feature)
            added += 1
    assert added > 0, "no labelled building in the suggested cells"
    step = dialog.finetune()
    assert step is not None, dialog.statusLabel.text()
    assert wait_until(lambda: "after" in dialog.counts or (dialog.run is None and not step.succeeded), limit_s=300)
    assert "after" in dialog.counts, dialog.statusLabel.text()
    assert dialog.counts["corrections"] == added and dialog.new_model == "tiny_test_model_improved"
    assert f"New model {dialog.new_model}" in dialog.statusLabel.text()
    from footprint_plugin.core.zoo.modelcard import find_model

    card = find_model(dialog.new_model)
    assert card.extra["fine_tune"]["labels"].startswith("user polygons from Corrections")
    assert card.extra["fine_tune"]["n_cells"] == 3
