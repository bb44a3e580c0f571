"""The `footprint` Processing provider."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .base import ICON_PATH
from .batch_detect import BatchDetectAlgorithm
from .detect_buildings import DetectBuildingsAlgorithm
from .evaluate_footprints import EvaluateFootprintsAlgorithm
from .finetune_model import FinetuneModelAlgorithm
from .regularize_footprints import RegularizeFootprintsAlgorithm
from .suggest_cells import SuggestCellsAlgorithm
from .train_model import TrainModelAlgorithm

PROVIDER_ID = "footprint"
ALGORITHM_CLASSES = (
    DetectBuildingsAlgorithm,
    BatchDetectAlgorithm,
    TrainModelAlgorithm,
    FinetuneModelAlgorithm,
    SuggestCellsAlgorithm,
    EvaluateFootprintsAlgorithm,
    RegularizeFootprintsAlgorithm,
)


class FootprintProvider(QgsProcessingProvider):
    """Registers every algorithm, even when torch is missing (canExecute then explains how to fix it)."""

    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "Building footprints"

    def longName(self) -> str:
        from .. import __version__

        return f"Building footprints {__version__}"

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def loadAlgorithms(self) -> None:
        for algorithm_class in ALGORITHM_CLASSES:
            self.addAlgorithm(algorithm_class())
