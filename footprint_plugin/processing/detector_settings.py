"""The detector settings that Detect buildings and its batch version share, in one place.

Model, device, threshold, minimum area, regularize and TTA: the parameters, and how their values
become the engine's options. The defaults come from the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
)

from ..core.common.vocabulary import DEFAULT_MIN_AREA_M2
from .compat import NUMBER_DOUBLE
from .models_choice import DEVICES, default_model, model_names, resolve_card

if TYPE_CHECKING:
    from ..core.engine.inference import InferenceOptions
    from ..core.vectors.polygons import PolygonOptions
    from ..core.zoo.modelcard import ModelCard


class DetectorSettings:
    """Mixin for a FootprintAlgorithm that runs the detector."""

    MODEL = "MODEL"
    DEVICE = "DEVICE"
    THRESHOLD = "THRESHOLD"
    MIN_AREA = "MIN_AREA"
    REGULARIZE = "REGULARIZE"
    TTA = "TTA"

    def add_detector_parameters(self) -> None:
        names = model_names()
        self.addParameter(
            QgsProcessingParameterEnum(
                self.MODEL,
                self.tr("Model"),
                options=names,
                defaultValue=default_model(names),
                optional=True,
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.DEVICE, self.tr("Device"), options=DEVICES, defaultValue="auto", usesStaticStrings=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD,
                self.tr("Probability threshold (empty: model card default)"),
                NUMBER_DOUBLE,
                optional=True,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_AREA,
                self.tr("Minimum building area (m²)"),
                NUMBER_DOUBLE,
                defaultValue=DEFAULT_MIN_AREA_M2,
                minValue=0.0,
            )
        )
        self.addParameter(QgsProcessingParameterBoolean(self.REGULARIZE, self.tr("Regularize outlines"), False))
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.TTA, self.tr("Test-time augmentation (the model card's policy, e.g. d4: 8 passes)"), False
            )
        )

    def detector_options(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[ModelCard, InferenceOptions, PolygonOptions]:
        """The chosen model's card and the inference and polygon options the parameters ask for."""
        from ..core.common.vocabulary import resolve_threshold
        from ..core.engine.inference import InferenceOptions
        from ..core.vectors.polygons import PolygonOptions

        card = resolve_card(self.parameterAsEnumString(parameters, self.MODEL, context))
        threshold_given = parameters.get(self.THRESHOLD) not in (None, "")
        threshold = resolve_threshold(
            self.parameterAsDouble(parameters, self.THRESHOLD, context) if threshold_given else None, card.threshold
        )
        inference_options = InferenceOptions(
            device=self.parameterAsEnumString(parameters, self.DEVICE, context) or "auto",
            tta=self.parameterAsBool(parameters, self.TTA, context),
        )
        polygon_options = PolygonOptions(
            threshold=threshold,
            min_area_m2=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            regularize=self.parameterAsBool(parameters, self.REGULARIZE, context),
        )
        return card, inference_options, polygon_options
