"""footprint:finetunemodel: adapt an existing model to your area with a few digitized buildings."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
)

from ..core.common.vocabulary import DEFAULT_BUDGET_MINUTES
from .base import GROUP_TRAIN
from .compat import NUMBER_INTEGER
from .models_choice import default_model, model_names, resolve_card
from .train_model import TrainModelAlgorithm


class FinetuneModelAlgorithm(TrainModelAlgorithm):
    BASE_MODEL = "BASE_MODEL"
    FREEZE_EPOCHS = "FREEZE_EPOCHS"

    NAME = "finetunemodel"
    DISPLAY_NAME = "Fine-tune a building model"
    GROUP = GROUP_TRAIN
    HELP = (
        "Fine-tunes an existing (bundled or user) model on your rasters and the buildings you digitized on them, "
        "and saves the result as a new model; the base model is left unchanged.\n\n"
        "<b>Time budget</b>: the fine-tune is asked for in minutes; with 0 epochs it makes as many epochs as "
        "fit (measured as it goes), and the learning-rate schedule ends with the budget.\n"
        "<b>Building polygons</b> may be the plugin's own detections after you edited them (deleted false "
        "positives, added misses): with the reviewed cells as <b>Area digitized</b>, an empty reviewed cell teaches "
        "'no building here', and nothing outside the cells counts.\n"
        "The new model keeps the base model's bands, scaling and pixel size, so the rasters must match them. "
        "<b>Frozen-encoder epochs</b> first train only the decoder, which helps with few labels.\n"
        "<b>Area digitized</b> (optional): polygons outlining where every building was drawn.\n\n"
        "Outputs: the new model card (listed in Detect buildings at once), validation metrics and a training "
        "report PNG."
    )

    def add_model_parameter(self) -> None:
        names = model_names()
        self.addParameter(
            QgsProcessingParameterEnum(
                self.BASE_MODEL,
                self.tr("Base model"),
                options=names,
                defaultValue=default_model(names),
                optional=True,
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.FREEZE_EPOCHS, self.tr("Frozen-encoder epochs"), NUMBER_INTEGER, 2, minValue=0
            )
        )

    def default_learning_rate(self) -> float:
        return 3e-4

    def default_epochs(self) -> int:
        return 0  # fill the time budget

    def epochs_label(self) -> str:
        return self.tr("Epochs (0: as many as fit into the time budget)")

    def budget_label(self) -> str:
        budgets = ", ".join(f"{minutes:g} on {kind.upper()}" for kind, minutes in DEFAULT_BUDGET_MINUTES.items())
        return self.tr("Time budget (minutes, 0: the default, {})").format(budgets)

    def has_default_budget(self) -> bool:
        return True

    def model_settings(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        card = resolve_card(self.parameterAsEnumString(parameters, self.BASE_MODEL, context))
        return {
            "arch": card.architecture,
            "base_model": str(card.path) if card.path else card.name,
            "freeze_encoder_epochs": self.parameterAsInt(parameters, self.FREEZE_EPOCHS, context),
            "sensor": card.sensor,
        }
