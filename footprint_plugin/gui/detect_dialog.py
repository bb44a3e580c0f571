"""The "Detect buildings" dialog: collects parameters for footprint:detectbuildings, nothing more."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

from qgis.core import QgsRasterLayer, QgsSettings
from qgis.PyQt import uic
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QFileDialog, QWidget

from ..processing.detect_buildings import DEVICES, default_model

UI_DIR = Path(__file__).resolve().parents[2] / "ui"
FORM_CLASS, _ = uic.loadUiType(str(UI_DIR / "detect_dialog.ui"))
SETTINGS_PREFIX = "building_footprints/detect/"


def card_html(card: Any) -> str:
    """A model card as short HTML: bands, GSD, sensor, metrics, data credits."""
    metrics = ", ".join(
        f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in list(card.metrics.items())[:6]
        if not isinstance(value, (dict, list))
    )
    credits = "; ".join(item.get("name", "") + (f" ({item['licence']})" if item.get("licence") else "") for item in card.training_data)
    rows = [
        ("Architecture", card.architecture),
        ("Sensor", card.sensor),
        ("Bands", ", ".join(card.band_roles)),
        ("Pixel size", f"{card.gsd_m:g} m"),
        ("Outputs", ", ".join(card.heads)),
        ("Metrics", metrics or "not reported"),
        ("Trained on", credits or "not stated"),
        ("Licence", card.licence or "not stated"),
        ("Location", "bundled" if card.bundled else str(card.path.parent if card.path else "")),
    ]
    body = "".join(f"<tr><td><b>{k}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    description = f"<p>{html.escape(card.description)}</p>" if card.description else ""
    return f"<h4>{html.escape(card.display_name)}</h4>{description}<table>{body}</table>"


def device_summary() -> tuple[bool, str]:
    """(a GPU is usable, text naming it or saying why none is used)."""
    try:
        from ..core.device import select_device

        choice = select_device("auto")
    except Exception as exc:  # noqa: BLE001 - the dialog must open even when torch is broken
        return False, f"CPU (device check failed: {exc})"
    text = choice.name + (f" ({choice.note})" if choice.note else "")
    return choice.device != "cpu", text


class DetectDialog(QDialog, FORM_CLASS):
    """Non-modal; the plugin connects `accepted` and reads `parameters()`."""

    def __init__(self, layer: QgsRasterLayer, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.layer = layer
        self.cards: list = []
        self.settings = QgsSettings()
        self.inputLabel.setText(f"Input raster: <b>{html.escape(layer.name())}</b> ({layer.width()} × {layer.height()} px, "
                                f"{layer.bandCount()} band(s), {html.escape(layer.crs().authid())})")
        self.deviceCombo.addItems(list(DEVICES))
        has_gpu, device_text = device_summary()
        self.deviceInfo.setText(device_text)
        self.outputButton.clicked.connect(self._browse_output)
        self.modelCombo.currentIndexChanged.connect(self._model_changed)
        self.reload_models()
        self._restore_settings()
        self.buttonBox.button(QDialogButtonBox.StandardButton.Ok).setText(self.tr("Detect"))
        self.buttonBox.accepted.connect(self.accept)
        self.buttonBox.rejected.connect(self.reject)
        self.accepted.connect(self._save_settings)

    def reload_models(self) -> None:
        """Re-read the model folders, so models trained or imported since are listed."""
        from ..core.modelcard import list_models

        current = self.modelCombo.currentData()
        self.cards = list_models()
        self.modelCombo.blockSignals(True)
        self.modelCombo.clear()
        for card in self.cards:
            self.modelCombo.addItem(card.display_name + ("" if card.bundled else " [user]"), card.name)
        self.modelCombo.blockSignals(False)
        wanted = current or self.settings.value(SETTINGS_PREFIX + "model", "") or default_model([card.name for card in self.cards])
        index = self.modelCombo.findData(wanted)
        self.modelCombo.setCurrentIndex(max(index, 0))
        self._model_changed()
        ok = self.buttonBox.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(bool(self.cards))
        if not self.cards:
            self.cardBrowser.setHtml("<p><b>No model installed.</b> Import one in the Model manager or train one.</p>")

    def selected_card(self) -> Any:
        index = self.modelCombo.currentIndex()
        return self.cards[index] if 0 <= index < len(self.cards) else None

    def _model_changed(self, *_args: Any) -> None:
        card = self.selected_card()
        if card is None:
            return
        self.cardBrowser.setHtml(card_html(card))
        self.thresholdSpin.setValue(card.threshold)
        self.ttaCheck.setEnabled(card.tta != "none")
        self.ttaCheck.setText(self.tr("Test-time augmentation ({} policy)").format(card.tta))
        if card.tta == "none":
            self.ttaCheck.setChecked(False)

    def _browse_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, self.tr("Save buildings as"), self.outputEdit.text(), "GeoPackage (*.gpkg)")
        if path:
            self.outputEdit.setText(path if path.lower().endswith(".gpkg") else path + ".gpkg")

    def _restore_settings(self) -> None:
        value = self.settings.value
        self.deviceCombo.setCurrentText(str(value(SETTINGS_PREFIX + "device", "auto")))
        self.minAreaSpin.setValue(float(value(SETTINGS_PREFIX + "min_area", 20.0)))
        self.regularizeCheck.setChecked(str(value(SETTINGS_PREFIX + "regularize", "false")).lower() == "true")
        card = self.selected_card()
        if card is not None and value(SETTINGS_PREFIX + "model", "") == card.name:
            self.thresholdSpin.setValue(float(value(SETTINGS_PREFIX + "threshold", card.threshold)))
            self.ttaCheck.setChecked(card.tta != "none" and str(value(SETTINGS_PREFIX + "tta", "false")).lower() == "true")

    def _save_settings(self) -> None:
        card = self.selected_card()
        if card is not None:
            self.settings.setValue(SETTINGS_PREFIX + "model", card.name)
        self.settings.setValue(SETTINGS_PREFIX + "device", self.deviceCombo.currentText())
        self.settings.setValue(SETTINGS_PREFIX + "threshold", self.thresholdSpin.value())
        self.settings.setValue(SETTINGS_PREFIX + "min_area", self.minAreaSpin.value())
        self.settings.setValue(SETTINGS_PREFIX + "regularize", "true" if self.regularizeCheck.isChecked() else "false")
        self.settings.setValue(SETTINGS_PREFIX + "tta", "true" if self.ttaCheck.isChecked() else "false")

    def output_path(self) -> str:
        return self.outputEdit.text().strip()

    def parameters(self, buildings_path: str, probability_path: str) -> dict[str, Any]:
        """Parameters for footprint:detectbuildings."""
        card = self.selected_card()
        return {
            # A file path, not the layer object: the algorithm runs on a worker thread.
            "INPUT": self.layer.source(),
            "MODEL": card.name if card is not None else None,
            "DEVICE": self.deviceCombo.currentText(),
            "THRESHOLD": self.thresholdSpin.value(),
            "MIN_AREA": self.minAreaSpin.value(),
            "REGULARIZE": self.regularizeCheck.isChecked(),
            "TTA": self.ttaCheck.isChecked(),
            "OUTPUT": buildings_path,
            "PROBABILITY": probability_path,
        }
