""" "Improve for this area…": the guided loop after a Detect run, each heavy step one of our Processing
algorithms in the task manager.

1. Suggest cells (footprint:suggestcells) on the run's probability raster: a layer styled by rank.
2. Corrections: an editable GeoPackage layer pre-filled with the detections inside the top cells; the
   user deletes false positives, adds misses and reshapes outlines. The cells become the area of interest.
3. Fine-tune (footprint:finetunemodel) with the time budget: a new model in the user model folder.
4. Detect again (footprint:detectbuildings) with the new model; before/after counts in the dialog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from qgis.core import QgsProcessingOutputLayerDefinition, QgsProject, QgsVectorLayer
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.common.vocabulary import DEFAULT_BUDGET_MINUTES, DEFAULT_CELL_SIZE_M
from .tasks import AlgorithmRun, temporary_output
from .train_dialog import latest_epoch_line

CORRECTIONS_NAME = "Corrections"


def free_model_name(base: str) -> str:
    """base_improved, base_improved_2, … : the first name no installed model uses."""
    from ..core.zoo.modelcard import list_models

    taken = {card.name for card in list_models()}
    stem = f"{base}_improved"[:60]
    name, number = stem, 1
    while name in taken:
        number += 1
        name = f"{stem}_{number}"
    return name


def feature_count(path_or_layer: Any) -> int:
    layer = (
        path_or_layer if isinstance(path_or_layer, QgsVectorLayer) else QgsVectorLayer(str(path_or_layer), "", "ogr")
    )
    return int(layer.featureCount()) if layer.isValid() else 0


class ImproveDialog(QDialog):
    """Non-modal; built from a finished Detect run (its parameters and results)."""

    def __init__(self, detect_run: Any, iface: Any = None, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(self.tr("Improve for this area"))
        self.iface = iface
        self.detect_parameters = dict(detect_run.parameters)
        self.detect_results = dict(detect_run.results)
        self.run: Optional[AlgorithmRun] = None
        self.cells_path: Optional[str] = None
        self.corrections: Optional[QgsVectorLayer] = None
        self.new_model: Optional[str] = None
        self.counts: dict[str, int] = {"before": feature_count(self.detect_results.get("OUTPUT", ""))}
        self._build()
        self.poll = QTimer(self)
        self.poll.setInterval(250)
        self.poll.timeout.connect(self._poll_progress)

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.cellsSpin = QSpinBox()
        self.cellsSpin.setRange(1, 200)
        self.cellsSpin.setValue(8)
        self.cellSizeSpin = QDoubleSpinBox()
        self.cellSizeSpin.setRange(5.0, 1000.0)
        self.cellSizeSpin.setValue(DEFAULT_CELL_SIZE_M)
        self.cellSizeSpin.setSuffix(" m")
        self.budgetSpin = QDoubleSpinBox()
        self.budgetSpin.setRange(0.0, 600.0)
        self.budgetSpin.setSuffix(" min")
        self.budgetSpin.setSpecialValueText(
            self.tr("default ({:g} min on a CPU, {:g} on a GPU)").format(
                DEFAULT_BUDGET_MINUTES["cpu"], DEFAULT_BUDGET_MINUTES["cuda"]
            )
        )
        form.addRow(self.tr("Cells to review"), self.cellsSpin)
        form.addRow(self.tr("Cell size"), self.cellSizeSpin)
        form.addRow(self.tr("Fine-tuning time budget"), self.budgetSpin)
        layout.addLayout(form)
        self.suggestButton = QPushButton(self.tr("1. Suggest cells"))
        self.correctionsButton = QPushButton(self.tr("2. Open the Corrections layer"))
        self.finetuneButton = QPushButton(self.tr("3. Fine-tune, then detect again"))
        self.cancelButton = QPushButton(self.tr("Stop"))
        for button, slot in (
            (self.suggestButton, self.suggest),
            (self.correctionsButton, self.open_corrections),
            (self.finetuneButton, self.finetune),
            (self.cancelButton, self.cancel),
        ):
            button.clicked.connect(slot)
            layout.addWidget(button)
        self.statusLabel = QLabel(
            self.tr("Model {}: {} buildings detected. Start with the cells to review.").format(
                self.detect_parameters.get("MODEL"), self.counts["before"]
            )
        )
        self.statusLabel.setWordWrap(True)
        self.epochLabel = QLabel()
        self.progressBar = QProgressBar()
        for widget in (self.statusLabel, self.epochLabel, self.progressBar):
            layout.addWidget(widget)
        self._enable()

    def _enable(self) -> None:
        busy = self.run is not None
        self.suggestButton.setEnabled(not busy)
        self.correctionsButton.setEnabled(not busy and self.cells_path is not None)
        self.finetuneButton.setEnabled(not busy and self.corrections is not None)
        self.cancelButton.setEnabled(busy)

    # --- running ----------------------------------------------------------------------------------------
    def _start(self, algorithm_id: str, parameters: dict[str, Any], done: Any, description: str) -> AlgorithmRun:
        self.progressBar.setValue(0)
        self.epochLabel.setText("")
        self.run = AlgorithmRun(algorithm_id, parameters, done, description=description).start()
        self.poll.start()
        self._enable()
        return self.run

    def _ended(self, ok: bool, run: AlgorithmRun, what: str) -> bool:
        self.poll.stop()
        self.run = None
        self._enable()
        if not ok:
            reason = self.tr("stopped") if run.canceled() else run.error_text()
            self.statusLabel.setText(f"<b>{what} {self.tr('did not finish')}:</b> {reason}")
        return ok

    def _poll_progress(self) -> None:
        if self.run is not None:
            self.progressBar.setValue(int(self.run.feedback.progress()))
            line = latest_epoch_line(self.run.feedback.textLog())
            if line:
                self.epochLabel.setText(line)

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()

    # --- 1. cells ---------------------------------------------------------------------------------------
    def suggest(self) -> Optional[AlgorithmRun]:
        parameters = {
            "PROBABILITY": self.detect_results.get("PROBABILITY"),
            "IMAGE": self.detect_parameters.get("INPUT"),
            "DETECTIONS": self.detect_results.get("OUTPUT"),
            "CELL_SIZE": self.cellSizeSpin.value(),
            "MAX_CELLS": self.cellsSpin.value(),
            "THRESHOLD": self.detect_parameters.get("THRESHOLD") or 0.5,
            # A layer definition with the project: loaded (and styled by rank) when the task ends.
            "OUTPUT": QgsProcessingOutputLayerDefinition(
                temporary_output("cells_to_review.gpkg"), QgsProject.instance()
            ),
        }
        if not parameters["PROBABILITY"]:
            self.statusLabel.setText(self.tr("<b>The Detect run kept no probability raster; run Detect again.</b>"))
            return None
        return self._start("footprint:suggestcells", parameters, self._cells_done, self.tr("Where to digitize next"))

    def _cells_done(self, ok: bool, results: dict[str, Any], run: AlgorithmRun) -> None:
        if not self._ended(ok, run, self.tr("Suggesting cells")):
            return
        self.cells_path = str(results.get("OUTPUT"))
        self.counts["cells"] = int(results.get("N_CELLS") or 0)
        self.statusLabel.setText(
            self.tr("{} cells to review (rank 1 first). Next: open the Corrections layer.").format(self.counts["cells"])
        )
        self._enable()

    # --- 2. corrections ---------------------------------------------------------------------------------
    def open_corrections(self) -> Optional[QgsVectorLayer]:
        """An editable copy of the detections inside the cells; the cells are the area of interest."""
        from ..core.io.vector_io import read_polygons, write_polygons
        from ..core.learning.suggest import detections_in_cells
        from ..processing.base import from_qgs_geometry

        cells_layer = QgsVectorLayer(str(self.cells_path), "cells", "ogr")
        cells = [from_qgs_geometry(f.geometry()) for f in cells_layer.getFeatures()]
        crs_wkt = cells_layer.crs().toWkt()
        detections = read_polygons(Path(str(self.detect_results.get("OUTPUT"))), target_crs_wkt=crs_wkt).geometries
        inside = detections_in_cells(cells, detections)
        path = temporary_output("corrections.gpkg")
        write_polygons(path, inside, [{"reviewed": False}] * len(inside), crs_wkt, fields={"reviewed": bool})
        self.corrections = QgsVectorLayer(path, CORRECTIONS_NAME, "ogr")
        QgsProject.instance().addMapLayer(self.corrections)
        self.corrections.startEditing()
        if self.iface is not None:
            self.iface.setActiveLayer(self.corrections)
        self.counts["prefilled"] = len(inside)
        self.statusLabel.setText(
            self.tr(
                "The Corrections layer holds the {} detections inside the cells and is in edit mode: delete false "
                "positives, add missed buildings, fix outlines, in every cell (an empty cell means 'no building "
                "here'). Then fine-tune."
            ).format(len(inside))
        )
        self._enable()
        return self.corrections

    # --- 3. fine-tune, 4. detect again ------------------------------------------------------------------
    def finetune(self) -> Optional[AlgorithmRun]:
        if self.corrections is None:
            return None
        if self.corrections.isEditable() and not self.corrections.commitChanges():
            self.statusLabel.setText(
                self.tr("<b>Could not save the Corrections layer:</b> {}").format(
                    "; ".join(self.corrections.commitErrors())
                )
            )
            return None
        self.counts["corrections"] = feature_count(self.corrections)
        base = str(self.detect_parameters.get("MODEL"))
        self.new_model = free_model_name(base)
        parameters = {
            "INPUT": [self.detect_parameters.get("INPUT")],
            "BUILDINGS": self.corrections.source(),
            "AOI": self.cells_path,
            "BASE_MODEL": base,
            "EPOCHS": 0,
            "MAX_MINUTES": self.budgetSpin.value(),
            "NAME": self.new_model,
            "DEVICE": self.detect_parameters.get("DEVICE", "auto"),
        }
        return self._start("footprint:finetunemodel", parameters, self._tuned, self.tr("Fine-tune {}").format(base))

    def _tuned(self, ok: bool, results: dict[str, Any], run: AlgorithmRun) -> None:
        if not self._ended(ok, run, self.tr("Fine-tuning")):
            return
        self.statusLabel.setText(str(results.get("SUMMARY", "")).replace("\n", "<br>"))
        parameters = dict(self.detect_parameters)
        project = QgsProject.instance()
        parameters.update(
            MODEL=self.new_model,
            OUTPUT=QgsProcessingOutputLayerDefinition(temporary_output("buildings_improved.gpkg"), project),
            PROBABILITY=QgsProcessingOutputLayerDefinition(temporary_output("probability_improved.tif"), project),
        )
        self._start(
            "footprint:detectbuildings", parameters, self._detected, self.tr("Detect with {}").format(self.new_model)
        )

    def _detected(self, ok: bool, results: dict[str, Any], run: AlgorithmRun) -> None:
        if not self._ended(ok, run, self.tr("Detecting again")):
            return
        self.counts["after"] = feature_count(results.get("OUTPUT", ""))
        self.statusLabel.setText(
            self.tr(
                "New model {}: {} buildings (before: {} with {}). In the reviewed cells you kept {} buildings of "
                "{} detections. Review more cells and fine-tune again to improve further."
            ).format(
                self.new_model,
                self.counts["after"],
                self.counts["before"],
                self.detect_parameters.get("MODEL"),
                self.counts.get("corrections", 0),
                self.counts.get("prefilled", 0),
            )
        )

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.poll.stop()
        super().closeEvent(event)
