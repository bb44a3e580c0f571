"""The "Detect buildings" dialog: collects parameters for footprint:detectbuildings, nothing more.

Outputs use QGIS's own Processing destination widgets (temporary layer, file, GeoPackage or PostGIS
table), and the area choice maps onto the algorithm's EXTENT and MASK parameters, so the dialog can
offer nothing that the toolbox would run differently.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayerProxyModel,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingOutputLayerDefinition,
    QgsProject,
    QgsRasterLayer,
    QgsReferencedRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.gui import QgsMapLayerComboBox, QgsProcessingLayerOutputDestinationWidget, QgsProcessingParameterWidgetContext
from qgis.PyQt import uic
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QComboBox, QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QWidget

from ..core.common.vocabulary import DEFAULT_MIN_AREA_M2
from ..processing.models_choice import DEVICES, default_model
from ..processing.results import is_result_layer
from . import warmup
from .warmup import device_summary  # noqa: F401 - kept importable from here

UI_DIR = Path(__file__).resolve().parents[2] / "ui"
FORM_CLASS, _ = uic.loadUiType(str(UI_DIR / "detect_dialog.ui"))
SETTINGS_PREFIX = "building_footprints/detect/"
ALGORITHM_ID = "footprint:detectbuildings"

AREA_ENTIRE, AREA_CANVAS, AREA_FEATURES, AREA_SELECTED = range(4)
AREA_LABELS = (
    "Entire layer",
    "Current map extent",
    "Inside the features of a polygon layer",
    "Inside the selected features of a polygon layer",
)


def _area_name(area: str) -> str:
    """`hotosm_kampala_z19` -> `Kampala z19`: card keys as a user reads them."""
    parts = area.split("_")
    if parts and parts[0] in ("hotosm", "spacenet1", "spacenet4", "spacenet6", "spacenet7", "xview2"):
        prefix = {"hotosm": "", "xview2": "xView2 "}.get(parts[0], parts[0].replace("spacenet", "SpaceNet ") + " ")
        parts = parts[1:]
        return (prefix + " ".join(p if p[:1] == "z" and p[1:].isdigit() else p.capitalize() for p in parts)).strip()
    return area.replace("_", " ")


def held_out_scores(card: Any) -> list[tuple[str, dict[str, Any]]]:
    """(area, scores) for every area the card says was held out of training (split test)."""
    per_area = (card.metrics or {}).get("per_area") or {}
    return [(area, s) for area, s in per_area.items() if isinstance(s, dict) and s.get("split") == "test" and "f1" in s]


def model_size_text(card: Any) -> str:
    weights = card.path.parent / card.weights_file if getattr(card, "path", None) and card.weights_file else None
    if weights is None or not weights.is_file():
        return "unknown"
    return f"{weights.stat().st_size / 1e6:.1f} MB"


def card_html(card: Any) -> str:
    """A model card as short HTML: what it expects (sensor, bands, GSD), how well it does on held-out areas,
    what it was trained on (dataset names with their licences) and its size."""
    credits = "; ".join(
        html.escape(item.get("source") or item.get("name") or item.get("credit") or "unnamed dataset")
        + (f" ({html.escape(item['licence'])})" if item.get("licence") else "")
        for item in card.training_data
    )
    scores = held_out_scores(card)
    held_out = "<br>".join(
        f"{html.escape(_area_name(area))}: F1 <b>{s['f1']:.2f}</b>"
        + (f" (precision {s['precision']:.2f}, recall {s['recall']:.2f})" if "precision" in s and "recall" in s else "")
        for area, s in scores
    )
    version = (
        f" v{card.version}" if getattr(card, "version", "") and f"v{card.version}" not in card.display_name else ""
    )
    rows = [
        ("Sensor", html.escape(str(card.sensor))),
        ("Bands", html.escape(", ".join(card.band_roles))),
        ("Pixel size (GSD)", f"{card.gsd_m:g} m (other rasters are resampled to it)"),
        ("Held-out F1 (IoU 0.5)", held_out or "not reported"),
        ("Trained on", credits or "not stated"),
        ("Architecture", html.escape(f"{card.architecture}, outputs: {', '.join(card.heads)}")),
        ("Size", model_size_text(card)),
        ("Licence", html.escape(card.licence or "not stated")),
        ("Location", "bundled" if card.bundled else html.escape(str(card.path.parent if card.path else ""))),
    ]
    body = "".join(f"<tr><td valign='top'><b>{k}</b>&nbsp;</td><td>{v}</td></tr>" for k, v in rows)
    description = f"<p>{html.escape(card.description)}</p>" if card.description else ""
    return f"<h4>{html.escape(card.display_name)}{html.escape(version)}</h4>{description}<table>{body}</table>"


def layer_label(layer: Any) -> str:
    """A layer's name with where it comes from, so two layers of the same name can be told apart."""
    source = layer.source().split("|")[0]
    if layer.providerType() in ("gdal", "ogr") and Path(source).name:
        where = Path(source).name
    elif layer.providerType() == "memory":
        where = "temporary layer"
    else:
        where = f"{layer.providerType()} layer"
    return f"{layer.name()} [{where}]"


def model_misfit(card: Any, band_count: int, sar_reason: Optional[str], is_file: bool) -> Optional[str]:
    """Why a model does not fit the input raster (sensor, band count), or None when it fits."""
    if sar_reason and card.sensor == "EO":
        return "an optical (EO) model; this raster looks like radar (SAR)"
    if is_file and not sar_reason and card.sensor == "SAR":
        return "a radar (SAR) model; this raster looks optical (EO)"
    if is_file:
        from ..core.common.errors import ModelError
        from ..core.engine.scaling import resolve_bands

        try:
            resolve_bands(band_count, card)
        except ModelError:
            return f"needs {card.in_channels} band(s) ({', '.join(card.band_roles)}); this raster has {band_count}"
    return None


def raster_sar_reason(layer: Any) -> Optional[str]:
    """Why a file raster looks like SAR (core.io.sensor), or None; web layers are fetched as optical RGB."""
    if layer is None or layer.providerType() != "gdal":
        return None
    try:
        from ..core.io.sensor import raster_sar_reason as core_reason

        return core_reason(layer.source().split("|")[0])
    except Exception:  # noqa: BLE001 - an unreadable raster is reported by the run itself
        return None


def _data_band_count(layer: Any) -> int:
    """Bands without an alpha band (RGBA is read as RGB plus a mask)."""
    provider = layer.dataProvider()
    alpha = Qgis.RasterColorInterpretation.AlphaBand if hasattr(Qgis, "RasterColorInterpretation") else 6
    count = layer.bandCount()
    bands = [b for b in range(1, count + 1) if provider.colorInterpretation(b) != alpha]
    return len(bands) if count > 1 else count


class DetectDialog(QDialog, FORM_CLASS):
    """Non-modal; the plugin connects `accepted` and reads `parameters()`."""

    def __init__(
        self, layer: Optional[QgsRasterLayer] = None, parent: Optional[QWidget] = None, canvas: Any = None
    ) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.canvas = canvas
        self.cards: list = []
        self.misfits: dict[str, Optional[str]] = {}
        self.sar_reason: Optional[str] = None
        self.settings = QgsSettings()
        self.inputCombo = QgsMapLayerComboBox()
        self.inputCombo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.inputCombo.setAllowEmptyLayer(False)
        self.inputCombo.setExceptedLayerList(
            [candidate for candidate in QgsProject.instance().mapLayers().values() if is_result_layer(candidate)]
        )
        if layer is not None:
            self.inputCombo.setLayer(layer)
        input_row = QWidget()
        input_layout = QHBoxLayout(input_row)
        input_layout.setContentsMargins(0, 0, 0, 0)
        input_layout.addWidget(QLabel(self.tr("Input raster")))
        input_layout.addWidget(self.inputCombo, 1)
        self.mainLayout.insertWidget(0, input_row)
        self.deviceCombo.addItems(list(DEVICES))
        self.modelCombo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self._add_area_and_outputs()
        self._show_device()
        self.modelCombo.currentIndexChanged.connect(self._model_changed)
        self._input_changed()  # describes the input and lists the models that fit it
        self._restore_settings()
        self.buttonBox.button(QDialogButtonBox.StandardButton.Ok).setText(self.tr("Detect"))
        self.accepted_parameters: Optional[dict[str, Any]] = None
        self.errorLabel = QLabel()
        self.errorLabel.setWordWrap(True)
        self.errorLabel.setVisible(False)
        self.mainLayout.insertWidget(self.mainLayout.count() - 1, self.errorLabel)
        self.buttonBox.accepted.connect(self.accept)
        self.buttonBox.rejected.connect(self.reject)
        self.accepted.connect(self._save_settings)
        self.inputCombo.layerChanged.connect(self._input_changed)

    @property
    def layer(self) -> Optional[QgsRasterLayer]:
        """The raster the run will read: the input picker's choice."""
        return self.inputCombo.currentLayer()

    def set_input(self, layer: QgsRasterLayer) -> None:
        self.inputCombo.setLayer(layer)

    def _input_changed(self, *_args: Any) -> None:
        """A new input: describe it, and grey out the models that do not fit it (sensor, bands)."""
        layer = self.layer
        if layer is None:
            self.inputLabel.setText(self.tr("<b>Add a raster layer to the project to detect buildings in it.</b>"))
            self.buttonBox.button(QDialogButtonBox.StandardButton.Ok).setEnabled(False)
            return
        kind = (
            "file"
            if layer.providerType() == "gdal"
            else f"{layer.providerType()} web/service layer, fetched at the model's pixel size"
        )
        self.sar_reason = raster_sar_reason(layer)
        sensor = f", looks like radar (SAR): {self.sar_reason}" if self.sar_reason else ""
        self.inputLabel.setText(
            f"{html.escape(kind)}, {layer.bandCount()} band(s), {html.escape(layer.crs().authid())}"
            + html.escape(sensor)
        )
        if layer.providerType() != "gdal" and self.canvas is not None:
            self.areaCombo.setCurrentIndex(AREA_CANVAS)  # a web map covers the world: start from the view
        self.reload_models()

    def accept(self) -> None:
        """Close only with parameters that make sense; otherwise say what to change and stay open."""
        try:
            self.accepted_parameters = self.parameters()
        except ValueError as exc:
            self.errorLabel.setText(f"<b>{html.escape(str(exc))}</b>")
            self.errorLabel.setVisible(True)
            return
        super().accept()

    # --- widgets ----------------------------------------------------------------------------------------
    def _add_area_and_outputs(self) -> None:
        # The algorithm's own parameter definitions drive QGIS's destination widgets (same formats and
        # choices as the toolbox). Our own instance: the widgets keep pointers into it.
        self._algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM_ID).create()
        self._widget_context = QgsProcessingParameterWidgetContext()
        self._widget_context.setProject(QgsProject.instance())
        if self.canvas is not None:
            self._widget_context.setMapCanvas(self.canvas)

        self.areaCombo = QComboBox()
        for label in AREA_LABELS:
            self.areaCombo.addItem(self.tr(label))
        self.maskCombo = QgsMapLayerComboBox()
        self.maskCombo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.maskCombo.setAllowEmptyLayer(False)
        area_row = QWidget()
        area_layout = QHBoxLayout(area_row)
        area_layout.setContentsMargins(0, 0, 0, 0)
        area_layout.addWidget(self.areaCombo)
        area_layout.addWidget(self.maskCombo, 1)
        self.areaCombo.currentIndexChanged.connect(self._area_changed)
        self.formLayout.addRow(QLabel(self.tr("Area")), area_row)
        if self.canvas is None:
            self.areaCombo.model().item(AREA_CANVAS).setEnabled(False)
        self.maskCombo.setExceptedLayerList(
            [candidate for candidate in QgsProject.instance().mapLayers().values() if is_result_layer(candidate)]
        )
        selected = [
            candidate
            for candidate in QgsProject.instance().mapLayers().values()
            if isinstance(candidate, QgsVectorLayer) and candidate.selectedFeatureCount() > 0
        ]
        if selected:
            self.maskCombo.setLayer(selected[0])  # the layer the user just selected polygons in
        self._area_changed()

        self.outputWidget = QgsProcessingLayerOutputDestinationWidget(
            self._algorithm.parameterDefinition("OUTPUT"), False
        )
        self.outputWidget.setWidgetContext(self._widget_context)
        self.formLayout.addRow(QLabel(self.tr("Buildings")), self.outputWidget)
        self.probabilityWidget = QgsProcessingLayerOutputDestinationWidget(
            self._algorithm.parameterDefinition("PROBABILITY"), False
        )
        self.probabilityWidget.setWidgetContext(self._widget_context)
        self.probabilityWidget.setValue("TEMPORARY_OUTPUT")
        self.formLayout.addRow(QLabel(self.tr("Probability raster")), self.probabilityWidget)

    def _area_changed(self, *_args: Any) -> None:
        self.maskCombo.setEnabled(self.areaCombo.currentIndex() in (AREA_FEATURES, AREA_SELECTED))

    def _show_device(self) -> None:
        """The device check imports torch (seconds): never on the GUI thread before the warm-up did it."""
        ready = warmup.device_text()
        if ready is not None:
            self.deviceInfo.setText(ready)
            return
        self.deviceInfo.setText(self.tr("Checking for a GPU…"))
        warmup.start()
        self._device_timer = QTimer(self)
        self._device_timer.setInterval(200)
        self._device_timer.timeout.connect(self._poll_device)
        self._device_timer.start()

    def _poll_device(self) -> None:
        text = warmup.device_text()
        if text is not None:
            self._device_timer.stop()
            self.deviceInfo.setText(text)

    # --- models -----------------------------------------------------------------------------------------
    def reload_models(self) -> None:
        """Re-read the model folders, so models trained or imported since are listed; each shows its
        sensor, and models that do not fit the input are greyed out with the reason."""
        from ..core.zoo.modelcard import list_models

        current = self.modelCombo.currentData()
        self.cards = list_models()
        layer = self.layer
        bands = _data_band_count(layer) if layer is not None else 0
        is_file = layer is not None and layer.providerType() == "gdal"
        self.misfits = {card.name: model_misfit(card, bands, self.sar_reason, is_file) for card in self.cards}
        self.modelCombo.blockSignals(True)
        self.modelCombo.clear()
        items = self.modelCombo.model()
        for index, card in enumerate(self.cards):
            version = (
                f" v{card.version}"
                if getattr(card, "version", "") and f"v{card.version}" not in card.display_name
                else ""
            )
            label = f"{card.display_name}{version} — {card.sensor}, {card.in_channels} band(s)"
            label += "" if card.bundled else " [user]"
            misfit = self.misfits[card.name]
            self.modelCombo.addItem(label + (f" (not for this raster: {misfit})" if misfit else ""), card.name)
            if misfit:
                items.item(index).setEnabled(False)
                self.modelCombo.setItemData(index, misfit, Qt.ItemDataRole.ToolTipRole)
        self.modelCombo.blockSignals(False)
        fitting = [card.name for card in self.cards if not self.misfits[card.name]]
        preferred = [current, self.settings.value(SETTINGS_PREFIX + "model", ""), default_model(fitting or None)]
        wanted = next((name for name in preferred if name in fitting), fitting[0] if fitting else None)
        self.modelCombo.setCurrentIndex(max(self.modelCombo.findData(wanted), 0) if wanted else -1)
        self._model_changed()
        ok = self.buttonBox.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(bool(fitting))
        if not self.cards:
            self.cardBrowser.setHtml("<p><b>No model installed.</b> Import one in the Model manager or train one.</p>")
        elif not fitting:
            self.cardBrowser.setHtml(f"<p><b>{html.escape(self.no_model_message())}</b></p>")

    def no_model_message(self) -> str:
        """Why no installed model can run on this input, and how to get one."""
        layer = self.layer
        if self.sar_reason and layer is not None:
            from ..core.io.sensor import sar_refusal

            eo = next((card.name for card in self.cards if card.sensor == "EO"), "installed")
            return sar_refusal(layer.name(), self.sar_reason, eo, [])
        reasons = "; ".join(f"{name}: {why}" for name, why in self.misfits.items() if why)
        return f"No installed model fits this raster ({reasons}). Import or train one for it."

    def selected_card(self) -> Any:
        index = self.modelCombo.currentIndex()
        card = self.cards[index] if 0 <= index < len(self.cards) else None
        return card if card is not None and not self.misfits.get(card.name) else None

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

    # --- settings ---------------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        value = self.settings.value
        self.deviceCombo.setCurrentText(str(value(SETTINGS_PREFIX + "device", "auto")))
        self.minAreaSpin.setValue(float(value(SETTINGS_PREFIX + "min_area", DEFAULT_MIN_AREA_M2)))
        self.regularizeCheck.setChecked(str(value(SETTINGS_PREFIX + "regularize", "false")).lower() == "true")
        card = self.selected_card()
        if card is not None and value(SETTINGS_PREFIX + "model", "") == card.name:
            self.thresholdSpin.setValue(float(value(SETTINGS_PREFIX + "threshold", card.threshold)))
            self.ttaCheck.setChecked(
                card.tta != "none" and str(value(SETTINGS_PREFIX + "tta", "false")).lower() == "true"
            )

    def _save_settings(self) -> None:
        card = self.selected_card()
        if card is not None:
            self.settings.setValue(SETTINGS_PREFIX + "model", card.name)
        self.settings.setValue(SETTINGS_PREFIX + "device", self.deviceCombo.currentText())
        self.settings.setValue(SETTINGS_PREFIX + "threshold", self.thresholdSpin.value())
        self.settings.setValue(SETTINGS_PREFIX + "min_area", self.minAreaSpin.value())
        self.settings.setValue(SETTINGS_PREFIX + "regularize", "true" if self.regularizeCheck.isChecked() else "false")
        self.settings.setValue(SETTINGS_PREFIX + "tta", "true" if self.ttaCheck.isChecked() else "false")

    # --- parameters -------------------------------------------------------------------------------------
    def set_destinations(self, buildings: Any, probability: Any = "TEMPORARY_OUTPUT") -> None:
        """Set both destinations as a user would in the widgets (a path, a `postgres:` URI, TEMPORARY_OUTPUT)."""
        self.outputWidget.setValue(buildings)
        self.probabilityWidget.setValue(probability)

    def set_area(self, area: int, mask_layer: Any = None) -> None:
        self.areaCombo.setCurrentIndex(area)
        if mask_layer is not None:
            self.maskCombo.setLayer(mask_layer)

    def _destination(self, widget: QgsProcessingLayerOutputDestinationWidget, name: str) -> Any:
        value = widget.value()
        if value is None or widget.outputIsSkipped():
            return None
        if not isinstance(value, QgsProcessingOutputLayerDefinition):
            value = QgsProcessingOutputLayerDefinition(str(value))
        # Load into this project after the run; processing/results.py names, styles and groups it.
        value.destinationProject = QgsProject.instance()
        value.destinationName = name
        return value

    def area_parameters(self) -> dict[str, Any]:
        """EXTENT and MASK for the chosen area (empty for the entire layer)."""
        area = self.areaCombo.currentIndex()
        if area == AREA_CANVAS and self.canvas is not None:
            return {"EXTENT": QgsReferencedRectangle(self.canvas.extent(), self.canvas.mapSettings().destinationCrs())}
        if area in (AREA_FEATURES, AREA_SELECTED):
            mask = self.maskCombo.currentLayer()
            if mask is None:
                raise ValueError(self.tr("Add a polygon layer to the project to limit the area to its features."))
            if area == AREA_SELECTED and mask.selectedFeatureCount() == 0:
                raise ValueError(
                    self.tr("No feature of {} is selected. Select some, or use all its features.").format(mask.name())
                )
            return {"MASK": QgsProcessingFeatureSourceDefinition(mask.id(), area == AREA_SELECTED)}
        return {}

    def parameters(self) -> dict[str, Any]:
        """Parameters for footprint:detectbuildings; raises ValueError with a how-to-fix message."""
        card = self.selected_card()
        if self.layer is None:
            raise ValueError(self.tr("Add a raster layer to the project and pick it as the input."))
        if card is None:
            raise ValueError(self.no_model_message())
        buildings = self._destination(self.outputWidget, "Buildings")
        if buildings is None:
            raise ValueError(self.tr("Choose where the buildings go (a temporary layer is fine)."))
        parameters = {
            # A file path (or the layer id of a web map), not the layer object: the algorithm runs on a worker thread.
            "INPUT": self.layer.source() if self.layer.providerType() == "gdal" else self.layer.id(),
            "MODEL": card.name if card is not None else None,
            "DEVICE": self.deviceCombo.currentText(),
            "THRESHOLD": self.thresholdSpin.value(),
            "MIN_AREA": self.minAreaSpin.value(),
            "REGULARIZE": self.regularizeCheck.isChecked(),
            "TTA": self.ttaCheck.isChecked(),
            "OUTPUT": buildings,
            "PROBABILITY": self._destination(self.probabilityWidget, "Building probability"),
        }
        parameters.update(self.area_parameters())
        return parameters
