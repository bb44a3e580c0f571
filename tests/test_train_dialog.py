"""Train dialog guard rails in real QGIS (offscreen): no plugin output preselected as labels, a warning for
the base model's held-out areas, a time budget with epoch/loss/F1/ETA progress and a readable result."""

from __future__ import annotations

import re

from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtCore import Qt

from footprint_plugin.core.common.vocabulary import BUILDING_FIELDS
from footprint_plugin.core.io.vector_io import read_polygons, write_polygons
from tests.qgis_helpers import wait_until


def _detections_file(tmp_path, labels_path):
    """A building layer as our Detect writes it (every output field), loaded from a file: not tagged as a result."""
    polygons = read_polygons(labels_path).geometries[:20]
    attributes = [
        {"score": 0.8, "area_m2": 50.0, "perimeter_m": 30.0, "compactness": 0.7, "regularized": False}
        | {"source": "x.tif", "model": "m v1"}
        for _ in polygons
    ]
    assert set(attributes[0]) == set(BUILDING_FIELDS)
    return write_polygons(tmp_path / "buildings.gpkg", polygons, attributes, "EPSG:4326")


def test_detections_never_preselected_and_labels_loaded_later_are_picked(plugin, shared_data, tmp_path):
    kampala = shared_data / "eo" / "hotosm_kampala"
    tile = sorted((kampala / "tiles").glob("OAM-*-19.tif"))[0]
    project = QgsProject.instance()
    project.addMapLayer(QgsRasterLayer(str(tile), "imagery"))
    detections = QgsVectorLayer(str(_detections_file(tmp_path, kampala / "labels.geojson")), "Buildings", "ogr")
    project.addMapLayer(detections)
    plugin.show_train_dialog()
    dialog = plugin._dialogs["train"]
    assert dialog.buildingsCombo.findData(detections.id()) >= 0  # offered, since corrections are labels
    assert dialog.buildingsCombo.currentIndex() == -1  # but never preselected
    labels = QgsVectorLayer(str(kampala / "labels.geojson"), "digitized", "ogr")
    project.addMapLayer(labels)  # loaded while the dialog is open
    assert dialog.buildingsCombo.currentData() == labels.id()
    assert [layer.name() for layer in dialog.checked_rasters()] == ["imagery"]


def test_warning_when_the_area_is_held_out_by_the_base_model(plugin, shared_data):
    project = QgsProject.instance()
    rio = QgsRasterLayer(str(sorted((shared_data / "eo" / "spacenet1_rio" / "tiles").glob("*.tif"))[0]), "rio")
    project.addMapLayer(rio)
    plugin.show_train_dialog()
    dialog = plugin._dialogs["train"]
    dialog.finetuneRadio.setChecked(True)
    dialog.baseModelCombo.setCurrentIndex(dialog.baseModelCombo.findData("footprint_eo_lite0"))
    assert dialog.check_held_out() == [] and dialog.warningLabel.isHidden()  # a training area of the base
    joplin = QgsRasterLayer(str(sorted((shared_data / "eo" / "xview2_joplin_pre" / "tiles").glob("*.tif"))[0]), "j")
    project.addMapLayer(joplin)
    for row in range(dialog.rasterList.count()):
        item = dialog.rasterList.item(row)
        if item.text().startswith("j"):
            item.setCheckState(Qt.CheckState.Checked)
    assert dialog.check_held_out() == ["xview2_joplin_pre"]
    assert not dialog.warningLabel.isHidden() and "held-out" in dialog.warningLabel.text()


def test_budget_fine_tune_shows_epoch_progress_and_a_readable_summary(plugin, qgis_iface, shared_data):
    kampala = shared_data / "eo" / "hotosm_kampala"
    tile = sorted((kampala / "tiles").glob("OAM-*-19.tif"))[0]
    raster = QgsRasterLayer(str(tile), "imagery")
    QgsProject.instance().addMapLayer(raster)
    qgis_iface.setActiveLayer(raster)
    QgsProject.instance().addMapLayer(QgsVectorLayer(str(kampala / "labels.geojson"), "digitized", "ogr"))
    plugin.show_train_dialog()
    dialog = plugin._dialogs["train"]
    dialog.finetuneRadio.setChecked(True)
    dialog.baseModelCombo.setCurrentIndex(dialog.baseModelCombo.findData("tiny_test_model"))
    dialog.epochsSpin.setValue(0)  # the dialog remembers the last run's epochs (an earlier test set 1)
    assert "budget" in dialog.epochsSpin.specialValueText()
    dialog.budgetSpin.setValue(0.3)
    dialog.deviceCombo.setCurrentText("cpu")
    dialog.nameEdit.setText("dialog_budget")
    run = dialog.start()
    assert run is not None, dialog.statusLabel.text()
    seen: list[str] = []

    def finished_or_progress() -> bool:
        dialog._poll_progress()
        if dialog.epochLabel.text():
            seen.append(dialog.epochLabel.text())
        return run.done

    assert wait_until(finished_or_progress, limit_s=180), "training never finished"
    assert run.succeeded, dialog.statusLabel.text()
    assert seen and re.match(r"epoch \d+/\d+: loss [0-9.]+.*, ETA \d+", seen[-1]), seen[-3:]
    status = dialog.statusLabel.text()
    assert "Model dialog_budget:" in status and "epochs in" in status and "{" not in status, status
    assert "Validation F1" in status and "buildings held out" in status, status  # the held-out block has labels
