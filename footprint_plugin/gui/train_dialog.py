"""The "Train / fine-tune model" dialog: picks layers and options, runs footprint:trainmodel or
footprint:finetunemodel in the task manager, and shows the training report when it ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from qgis.core import Qgis, QgsMapLayer, QgsProject, QgsRasterLayer, QgsSettings, QgsVectorLayer
from qgis.PyQt import uic
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QPixmap
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QListWidgetItem, QPushButton, QWidget

from ..core.common.vocabulary import (
    ARCHITECTURES,
    BUILDING_FIELDS,
    DEFAULT_ARCHITECTURE,
    DEFAULT_BUDGET_MINUTES,
    DEVICES,
    model_name_problem,
)
from ..processing.compat import GEOMETRY_POLYGON
from ..processing.results import is_result_layer
from .detect_dialog import layer_label
from .tasks import AlgorithmRun

UI_DIR = Path(__file__).resolve().parents[2] / "ui"
FORM_CLASS, _ = uic.loadUiType(str(UI_DIR / "train_dialog.ui"))
SETTINGS_PREFIX = "building_footprints/train/"


class TrainDialog(QDialog, FORM_CLASS):
    """Non-modal; `run` holds the training in flight (None when idle)."""

    def __init__(self, iface: Any = None, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.iface = iface
        self.run: Optional[AlgorithmRun] = None
        self.result: dict[str, Any] = {}
        self.settings = QgsSettings()
        self.architectureCombo.addItems(list(ARCHITECTURES))
        self.deviceCombo.addItems(list(DEVICES))
        self.train_button = QPushButton(self.tr("Train"))
        self.buttonBox.addButton(self.train_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.cancel_button = QPushButton(self.tr("Stop"))
        self.cancel_button.setEnabled(False)
        self.buttonBox.addButton(self.cancel_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.buttonBox.rejected.connect(self.close)
        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.newRadio.toggled.connect(self._mode_changed)
        self.baseModelCombo.currentIndexChanged.connect(self.check_held_out)
        self.rasterList.itemChanged.connect(self.check_held_out)
        # legendLayersAdded: the layer is in the layer tree by then (layersAdded fires before).
        QgsProject.instance().legendLayersAdded.connect(self._layers_added)
        self.poll = QTimer(self)
        self.poll.setInterval(250)
        self.poll.timeout.connect(self._poll_progress)
        self.fill_layers()
        self.fill_models()
        self._restore_settings()
        self._mode_changed()
        self.check_held_out()

    # --- choices ----------------------------------------------------------------------------------------
    def _layers_added(self, _layers: Any = None) -> None:
        """A layer loaded while the dialog is open (e.g. the labels just digitized) joins the lists."""
        chosen_labels = self.buildingsCombo.currentData()
        chosen_aoi = self.aoiCombo.currentData()
        ticked = {layer.id() for layer in self.checked_rasters()}
        self.fill_layers()
        for row in range(self.rasterList.count()):
            item = self.rasterList.item(row)
            if ticked:
                checked = item.data(Qt.ItemDataRole.UserRole) in ticked
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        if chosen_labels and self.buildingsCombo.findData(chosen_labels) >= 0:
            self.buildingsCombo.setCurrentIndex(self.buildingsCombo.findData(chosen_labels))
        if chosen_aoi and self.aoiCombo.findData(chosen_aoi) >= 0:
            self.aoiCombo.setCurrentIndex(self.aoiCombo.findData(chosen_aoi))

    def fill_layers(self) -> None:
        self.rasterList.blockSignals(True)
        self.rasterList.clear()
        self.buildingsCombo.clear()
        self.aoiCombo.clear()
        self.aoiCombo.addItem(self.tr("(none: the whole raster was digitized)"), "")
        active = self.iface.activeLayer() if self.iface is not None else None
        layers = [node.layer() for node in QgsProject.instance().layerTreeRoot().findLayers() if node.layer()]
        rasters = [layer for layer in layers if isinstance(layer, QgsRasterLayer) and layer.providerType() == "gdal"]
        # Never preselect our own outputs (probability rasters, predicted buildings) as training data.
        imagery = [layer for layer in rasters if not is_result_layer(layer)]
        ticked = active if active in imagery else (imagery[0] if imagery else None)
        for layer in rasters:
            item = QListWidgetItem(layer_label(layer))
            item.setData(Qt.ItemDataRole.UserRole, layer.id())
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if layer is ticked else Qt.CheckState.Unchecked)
            self.rasterList.addItem(item)
        self.rasterList.blockSignals(False)
        polygons = [lyr for lyr in layers if isinstance(lyr, QgsVectorLayer) and lyr.geometryType() == GEOMETRY_POLYGON]
        for layer in polygons:
            self.buildingsCombo.addItem(layer_label(layer), layer.id())
            self.aoiCombo.addItem(layer_label(layer), layer.id())
        # Labels: a polygon layer that is not one of our detections (the top one in the layer tree, usually the
        # latest loaded); none preselected otherwise, so plugin output never becomes labels by accident.
        digitized = [index for index, layer in enumerate(polygons) if not looks_like_detections(layer)]
        self.buildingsCombo.setCurrentIndex(digitized[0] if digitized else -1)

    def fill_models(self) -> None:
        from ..core.zoo.modelcard import list_models

        self.baseModelCombo.clear()
        for card in list_models():
            self.baseModelCombo.addItem(card.display_name, card.name)

    def _mode_changed(self, *_args: Any) -> None:
        new = self.newRadio.isChecked() or self.baseModelCombo.count() == 0
        if new and not self.newRadio.isChecked():
            self.newRadio.setChecked(True)
        self.architectureCombo.setEnabled(new)
        self.baseModelCombo.setEnabled(not new)
        if new:
            self.budgetSpin.setSpecialValueText(self.tr("no limit"))
        else:
            budgets = ", ".join(f"{m:g} min on {k.upper()}" for k, m in DEFAULT_BUDGET_MINUTES.items() if k != "mps")
            self.budgetSpin.setSpecialValueText(self.tr("default ({})").format(budgets))
        self.check_held_out()

    def check_held_out(self, *_args: Any) -> list[str]:
        """Warn when the ticked rasters look like one of the base model's held-out areas."""
        from ..core.learning.cards import held_out_matches
        from ..core.zoo.modelcard import find_model

        matches: list[str] = []
        if not self.newRadio.isChecked() and self.baseModelCombo.currentData():
            try:
                card = find_model(self.baseModelCombo.currentData())
            except Exception:  # noqa: BLE001 - a broken card is reported by the model list, not here
                card = None
            if card is not None:
                matches = held_out_matches(card, [layer.source() for layer in self.checked_rasters()])
        if matches:
            self.warningLabel.setText(
                self.tr(
                    "<b>Warning:</b> {} is one of the base model's held-out areas. After fine-tuning on it, the "
                    "card's held-out scores for it no longer apply; score the new model on other ground."
                ).format(", ".join(matches))
            )
        self.warningLabel.setVisible(bool(matches))
        return matches

    def checked_rasters(self) -> list[QgsMapLayer]:
        layers = []
        for row in range(self.rasterList.count()):
            item = self.rasterList.item(row)
            if item.checkState() == Qt.CheckState.Checked:
                layer = QgsProject.instance().mapLayer(item.data(Qt.ItemDataRole.UserRole))
                if layer is not None:
                    layers.append(layer)
        return layers

    def algorithm_and_parameters(self) -> tuple[str, dict[str, Any]]:
        """Which algorithm to run and its parameters; raises ValueError with a how-to-fix message."""
        rasters = self.checked_rasters()
        if not rasters:
            raise ValueError(self.tr("Tick at least one raster layer."))
        if self.buildingsCombo.currentIndex() < 0:
            raise ValueError(self.tr("Add a polygon layer with the digitized buildings to the project first."))
        name = self.nameEdit.text().strip()
        problem = model_name_problem(name)  # the one rule Processing, the CLI and the zoo apply too
        if problem:
            raise ValueError(problem)
        if self.newRadio.isChecked() and self.epochsSpin.value() == 0 and self.budgetSpin.value() == 0:
            raise ValueError(self.tr("Set the epochs or a time budget for a new model."))
        parameters: dict[str, Any] = {
            # File paths for rasters and layer ids for vectors: the algorithm runs on a worker thread.
            "INPUT": [layer.source() for layer in rasters],
            "BUILDINGS": self.buildingsCombo.currentData(),
            "AOI": self.aoiCombo.currentData() or None,
            "EPOCHS": self.epochsSpin.value(),
            "MAX_MINUTES": self.budgetSpin.value(),
            "NAME": name,
            "DEVICE": self.deviceCombo.currentText(),
        }
        if self.newRadio.isChecked():
            parameters["ARCHITECTURE"] = self.architectureCombo.currentText()
            return "footprint:trainmodel", parameters
        parameters["BASE_MODEL"] = self.baseModelCombo.currentData()
        return "footprint:finetunemodel", parameters

    # --- running ----------------------------------------------------------------------------------------
    def start(self) -> Optional[AlgorithmRun]:
        if self.run is not None:
            return self.run
        try:
            algorithm_id, parameters = self.algorithm_and_parameters()
        except ValueError as exc:
            self.statusLabel.setText(f"<b>{exc}</b>")
            return None
        self._save_settings()
        self.result = {}
        self.statusLabel.setText(
            self.tr("Training {}… (you can keep working; progress also shows in the task manager)").format(
                parameters["NAME"]
            )
        )
        self.progressBar.setValue(0)
        self.epochLabel.setText("")
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.run = AlgorithmRun(
            algorithm_id, parameters, self._finished, description=f"Train model {parameters['NAME']}"
        )
        self.run.start()
        self.poll.start()
        return self.run

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()

    def _poll_progress(self) -> None:
        if self.run is not None:
            self.progressBar.setValue(int(self.run.feedback.progress()))
            line = latest_epoch_line(self.run.feedback.textLog())
            if line:
                self.epochLabel.setText(line)

    def _finished(self, ok: bool, results: dict[str, Any], run: AlgorithmRun) -> None:
        self.poll.stop()
        self.run = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if not ok:
            reason = self.tr("Stopped; no model was saved.") if run.feedback.isCanceled() else run.error_text()
            self.statusLabel.setText(f"<b>{self.tr('Training did not finish')}:</b> {reason}")
            return
        self.result = results
        self.progressBar.setValue(100)
        report = results.get("REPORT")
        if report and Path(report).is_file():
            self.reportLabel.setPixmap(QPixmap(str(report)))
        summary = str(results.get("SUMMARY") or "").replace("\n", "<br>")
        self.statusLabel.setText(
            self.tr("{}<br>Model saved: {}. It is now listed in the Detect buildings dialog.").format(
                summary, results.get("MODEL_CARD", "?")
            )
        )
        self.fill_models()
        if self.iface is not None:
            self.iface.messageBar().pushMessage(
                "Building Footprints",
                self.tr("Training finished: {}").format(results.get("MODEL_CARD", "")),
                level=Qgis.MessageLevel.Success,
                duration=10,
            )

    # --- settings ---------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        value = self.settings.value
        self.epochsSpin.setValue(int(value(SETTINGS_PREFIX + "epochs", 0)))
        self.budgetSpin.setValue(float(value(SETTINGS_PREFIX + "budget_minutes", 0.0)))
        self.architectureCombo.setCurrentText(str(value(SETTINGS_PREFIX + "architecture", DEFAULT_ARCHITECTURE)))
        self.deviceCombo.setCurrentText(str(value(SETTINGS_PREFIX + "device", "auto")))
        index = self.baseModelCombo.findData(value(SETTINGS_PREFIX + "base_model", ""))
        if index >= 0:
            self.baseModelCombo.setCurrentIndex(index)
        if str(value(SETTINGS_PREFIX + "mode", "finetune")) == "new":
            self.newRadio.setChecked(True)

    def _save_settings(self) -> None:
        self.settings.setValue(SETTINGS_PREFIX + "epochs", self.epochsSpin.value())
        self.settings.setValue(SETTINGS_PREFIX + "budget_minutes", self.budgetSpin.value())
        self.settings.setValue(SETTINGS_PREFIX + "architecture", self.architectureCombo.currentText())
        self.settings.setValue(SETTINGS_PREFIX + "device", self.deviceCombo.currentText())
        self.settings.setValue(SETTINGS_PREFIX + "base_model", self.baseModelCombo.currentData() or "")
        self.settings.setValue(SETTINGS_PREFIX + "mode", "new" if self.newRadio.isChecked() else "finetune")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.poll.stop()
        super().closeEvent(event)


def looks_like_detections(layer: QgsMapLayer) -> bool:
    """One of our outputs: tagged as a result layer, or carrying every field of the building layer."""
    if is_result_layer(layer):
        return True
    names = set(layer.fields().names()) if isinstance(layer, QgsVectorLayer) else set()
    return set(BUILDING_FIELDS) <= names


def latest_epoch_line(log: str) -> str:
    """The last "epoch N/M: loss ..., val F1 ..., ETA ..." line of a feedback log, or ""."""
    for line in reversed(log.splitlines()):
        if line.strip().startswith("epoch "):
            return line.strip()
    return ""
