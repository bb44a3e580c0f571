"""footprint:trainmodel: train a new building model from rasters and digitized building polygons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.common.vocabulary import ARCHITECTURES, DEFAULT_ARCHITECTURE, DEFAULT_EPOCHS
from ..core.learning.augment import POLICIES as AUGMENTATIONS
from .base import GROUP_TRAIN, FeedbackAdapter, FootprintAlgorithm, raster_file, source_path
from .compat import FLAG_ADVANCED, NUMBER_DOUBLE, NUMBER_INTEGER, SOURCE_POLYGON, SOURCE_RASTER
from .models_choice import DEVICES

ENCODER_WEIGHT_CHOICES = ["auto", "imagenet", "random"]


class TrainModelAlgorithm(FootprintAlgorithm):
    INPUT = "INPUT"
    BUILDINGS = "BUILDINGS"
    AOI = "AOI"
    ARCHITECTURE = "ARCHITECTURE"
    EPOCHS = "EPOCHS"
    NAME_PARAM = "NAME"
    DEVICE = "DEVICE"
    BATCH_SIZE = "BATCH_SIZE"
    CHIP_SIZE = "CHIP_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    MAX_MINUTES = "MAX_MINUTES"
    AUGMENTATION = "AUGMENTATION"
    ENCODER_WEIGHTS = "ENCODER_WEIGHTS"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"

    NAME = "trainmodel"
    DISPLAY_NAME = "Train a building model"
    GROUP = GROUP_TRAIN
    HELP = (
        "Trains a new building segmentation model from one or more rasters and a polygon layer of the buildings "
        "you digitized on them.\n\n<b>Area digitized</b> (optional): polygons outlining where every building was "
        "drawn; pixels outside are ignored, so unlabelled areas do not teach the model that buildings are ground. "
        "Without it, the whole raster counts as labelled.\n<b>Architecture</b>: unet_mobilenetv2 is fastest on a CPU.\n"
        "A part of the chips is held out for validation; the best epoch is kept.\n"
        "<b>Augmentation</b> (advanced): <i>robust</i> also recolours roofs, blurs and turns more chips into "
        "panchromatic-like gray, for a model that must work on imagery unlike the rasters it learns from.\n\n"
        "Outputs: the new model card (the model appears in Detect buildings at once), its validation metrics and a "
        "training report PNG with loss and score curves."
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUT, self.tr("Raster(s)"), SOURCE_RASTER))
        polygon = [SOURCE_POLYGON]
        self.addParameter(QgsProcessingParameterFeatureSource(self.BUILDINGS, self.tr("Building polygons"), polygon))
        self.addParameter(
            QgsProcessingParameterFeatureSource(self.AOI, self.tr("Area digitized (optional)"), polygon, optional=True)
        )
        self.add_model_parameter()
        self.addParameter(
            QgsProcessingParameterNumber(
                self.EPOCHS, self.epochs_label(), NUMBER_INTEGER, self.default_epochs(), minValue=0, maxValue=1000
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MAX_MINUTES, self.budget_label(), NUMBER_DOUBLE, 0.0, minValue=0.0, maxValue=100000.0
            )
        )
        self.addParameter(QgsProcessingParameterString(self.NAME_PARAM, self.tr("New model name"), "my_buildings"))
        self.addParameter(
            QgsProcessingParameterEnum(
                self.DEVICE, self.tr("Device"), options=DEVICES, defaultValue="auto", usesStaticStrings=True
            )
        )
        advanced = [
            QgsProcessingParameterNumber(
                self.BATCH_SIZE, self.tr("Batch size"), NUMBER_INTEGER, 8, minValue=1, maxValue=256
            ),
            QgsProcessingParameterNumber(
                self.CHIP_SIZE,
                self.tr("Chip size (pixels, multiple of 32)"),
                NUMBER_INTEGER,
                256,
                minValue=64,
                maxValue=2048,
            ),
            QgsProcessingParameterNumber(
                self.LEARNING_RATE,
                self.tr("Learning rate"),
                NUMBER_DOUBLE,
                self.default_learning_rate(),
                minValue=1e-6,
                maxValue=1.0,
            ),
            QgsProcessingParameterEnum(
                self.AUGMENTATION,
                self.tr("Augmentation"),
                options=list(AUGMENTATIONS),
                defaultValue=AUGMENTATIONS[0],
                usesStaticStrings=True,
            ),
            QgsProcessingParameterFolderDestination(
                self.OUTPUT_FOLDER,
                self.tr("Model folder (empty: user model folder)"),
                optional=True,
                createByDefault=False,
            ),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | FLAG_ADVANCED)
            self.addParameter(parameter)
        self.addOutput(QgsProcessingOutputFile("MODEL_CARD", self.tr("Model card")))
        self.addOutput(QgsProcessingOutputFile("REPORT", self.tr("Training report (PNG)")))
        self.addOutput(QgsProcessingOutputString("METRICS", self.tr("Validation metrics (JSON)")))
        self.addOutput(QgsProcessingOutputString("MODEL_NAME", self.tr("Model name")))
        self.addOutput(QgsProcessingOutputNumber("BEST_EPOCH", self.tr("Best epoch")))
        self.addOutput(QgsProcessingOutputString("SUMMARY", self.tr("Summary")))

    def add_model_parameter(self) -> None:
        self.addParameter(
            QgsProcessingParameterEnum(
                self.ARCHITECTURE,
                self.tr("Architecture"),
                options=list(ARCHITECTURES),
                defaultValue=DEFAULT_ARCHITECTURE,
                usesStaticStrings=True,
            )
        )
        weights = QgsProcessingParameterEnum(
            self.ENCODER_WEIGHTS,
            self.tr("Encoder start (auto: ImageNet weights where the architecture has them)"),
            options=ENCODER_WEIGHT_CHOICES,
            defaultValue="auto",
            usesStaticStrings=True,
        )
        weights.setFlags(weights.flags() | FLAG_ADVANCED)
        self.addParameter(weights)

    def default_learning_rate(self) -> float:
        return 1e-3

    def epochs_label(self) -> str:
        return self.tr("Epochs (0: as many as fit into the time budget)")

    def budget_label(self) -> str:
        return self.tr("Time budget (minutes, 0: no limit)")

    def time_settings(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """Epochs and budget: 0 epochs fill the budget; a 0 budget means none (training) or the default."""
        epochs = self.parameterAsInt(parameters, self.EPOCHS, context)
        minutes = self.parameterAsDouble(parameters, self.MAX_MINUTES, context)
        if epochs == 0 and minutes <= 0 and not self.has_default_budget():
            raise QgsProcessingException("Set the epochs or a time budget (both are 0).")
        return {"epochs": epochs or None, "max_minutes": minutes if minutes > 0 else None}

    def has_default_budget(self) -> bool:
        return False

    def default_epochs(self) -> int:
        return DEFAULT_EPOCHS

    def model_settings(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """TrainingConfig fields that differ between training and fine-tuning."""
        return {
            "arch": self.parameterAsEnumString(parameters, self.ARCHITECTURE, context) or DEFAULT_ARCHITECTURE,
            "encoder_weights": self.parameterAsEnumString(parameters, self.ENCODER_WEIGHTS, context) or "auto",
        }

    def prepareAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> bool:
        # On the main thread: the project's layers are read here, so the worker thread that trains never
        # touches them while QGIS adds or draws layers (a button run raced and crashed that way).
        try:
            self._inputs = self._read_inputs(parameters, context, feedback)
        except QgsProcessingException:
            self._inputs = None  # perform() reads them again and raises the same message in the run's log
        return True

    def _read_inputs(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> tuple[list[Any], str, Any, str]:
        """(raster files, labels file, AOI file or None, the labels layer's name as the user sees it)."""
        rasters = self.parameterAsLayerList(parameters, self.INPUT, context)
        if not rasters:
            raise QgsProcessingException("Pick at least one raster layer with the buildings you digitized.")
        raster_paths = [raster_file(layer, self.INPUT) for layer in rasters]
        labels = source_path(self, parameters, self.BUILDINGS, context, feedback)
        if labels is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.BUILDINGS))
        aoi = source_path(self, parameters, self.AOI, context, feedback)
        return raster_paths, labels, aoi, self.source_name(parameters, self.BUILDINGS, context)

    def perform(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.learning.training import TrainingConfig, TrainingPair, train_model
        from ..core.zoo.modelcard import check_new_model_name

        inputs = getattr(self, "_inputs", None) or self._read_inputs(parameters, context, feedback)
        raster_paths, labels, aoi, labels_name = inputs
        name = check_new_model_name(self.parameterAsString(parameters, self.NAME_PARAM, context).strip())
        out_folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context) or None
        pairs = [
            TrainingPair(raster=raster, labels=Path(labels), aoi=Path(aoi) if aoi else None) for raster in raster_paths
        ]
        config = TrainingConfig(
            out_name=name,
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            chip_size=self.parameterAsInt(parameters, self.CHIP_SIZE, context),
            lr=self.parameterAsDouble(parameters, self.LEARNING_RATE, context),
            device=self.parameterAsEnumString(parameters, self.DEVICE, context) or "auto",
            augmentation=self.parameterAsEnumString(parameters, self.AUGMENTATION, context) or AUGMENTATIONS[0],
            out_dir=Path(out_folder) if out_folder else None,
            training_command=f"QGIS Processing footprint:{self.NAME}",
            labels_source=labels_name,
            **self.time_settings(parameters, context),
            **self.model_settings(parameters, context),
        )
        adapter = FeedbackAdapter(feedback)
        result = train_model(
            pairs, config, progress=adapter.progress, is_canceled=adapter.is_canceled, log=feedback.pushInfo
        )
        metrics = json.dumps(result.metrics, default=str)
        feedback.pushInfo(result.summary)
        feedback.pushInfo(f"Model card: {result.card_path}")
        report = str(result.report_png) if result.report_png and Path(result.report_png).exists() else None
        if report:
            feedback.pushInfo(f"Training report: {report}")
            if hasattr(feedback, "pushFormattedMessage"):
                feedback.pushFormattedMessage(
                    f'<img src="{Path(report).as_uri()}" width="640">', f"Training report: {report}"
                )
        return {
            "MODEL_CARD": str(result.card_path),
            "REPORT": report,
            "METRICS": metrics,
            "MODEL_NAME": name,
            "BEST_EPOCH": result.best_epoch,
            "SUMMARY": result.summary,
        }

    def source_name(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext) -> str:
        """The layer's name as the user sees it (for the card's provenance), else its file name."""
        layer = self.parameterAsVectorLayer(parameters, name, context)
        if layer is not None and layer.name():
            return layer.name()
        value = parameters.get(name)
        return Path(str(getattr(value, "source", value) or "")).name
