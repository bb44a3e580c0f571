"""Run our Processing algorithms in QGIS's task manager and deliver results on the main thread."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable

from qgis.core import (
    QgsApplication,
    QgsLayerTreeGroup,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
FinishedCallback = Callable[[bool, dict[str, Any], "AlgorithmRun"], None]


class AlgorithmRun:
    """One algorithm run as a QgsProcessingAlgRunnerTask; `on_finished(ok, results, run)` runs on the main thread.

    The context and feedback live here, because the task only borrows them. After the task finished the
    task manager deletes it, so nothing touches `task` then.
    """

    def __init__(
        self, algorithm_id: str, parameters: dict[str, Any], on_finished: FinishedCallback, description: str = ""
    ) -> None:
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
        if algorithm is None:
            raise RuntimeError(f"Processing algorithm {algorithm_id} is not registered; re-enable the plugin.")
        self.algorithm_id = algorithm_id
        self.parameters = parameters
        self.context = QgsProcessingContext()
        self.context.setProject(QgsProject.instance())
        self.feedback = QgsProcessingFeedback()
        self.log: list[str] = []
        self.task = QgsProcessingAlgRunnerTask(algorithm, parameters, self.context, self.feedback)
        if description:
            self.task.setDescription(description)
        self.on_finished = on_finished
        self.done = False
        self.succeeded = False
        self.results: dict[str, Any] = {}
        self.task.executed.connect(self._executed)

    def start(self) -> AlgorithmRun:
        _RUNNING.add(self)
        QgsApplication.taskManager().addTask(self.task)
        return self

    def cancel(self) -> None:
        if not self.done:
            self.feedback.cancel()
            self.task.cancel()

    def _executed(self, successful: bool, results: dict[str, Any]) -> None:
        self.done = True
        self.succeeded = bool(successful) and not self.feedback.isCanceled()
        self.results = dict(results or {})
        _RUNNING.discard(self)
        self.on_finished(self.succeeded, self.results, self)

    def error_text(self) -> str:
        """The algorithm's error messages, for the message bar."""
        text = self.feedback.textLog() if hasattr(self.feedback, "textLog") else ""
        errors = [line for line in text.splitlines() if line.strip()]
        return errors[-1] if errors else "see the log messages panel (Processing) for details"


# Runs in flight, kept alive until their task reports back (the task manager owns the tasks themselves).
_RUNNING: set[AlgorithmRun] = set()


def running_runs() -> list[AlgorithmRun]:
    return list(_RUNNING)


def temporary_output(name: str) -> str:
    """A fresh path in the Processing temporary folder."""
    folder = Path(QgsProcessingUtils.tempFolder()) / f"footprint_{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


def add_detection_layers(
    group_name: str, buildings_path: str, probability_path: str | None, project: QgsProject | None = None
) -> tuple[QgsLayerTreeGroup, list]:
    """A layer group named after the input: building outlines on top of the styled probability raster."""
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    group = root.insertGroup(0, group_name)
    group.setExpanded(True)
    added = []
    buildings = QgsVectorLayer(buildings_path, "Buildings", "ogr")
    if buildings.isValid():
        buildings.loadNamedStyle(str(RESOURCES / "buildings.qml"))
        project.addMapLayer(buildings, False)
        group.addLayer(buildings)
        added.append(buildings)
    if probability_path:
        probability = QgsRasterLayer(probability_path, "Building probability")
        if probability.isValid():
            probability.loadNamedStyle(str(RESOURCES / "probability.qml"))
            project.addMapLayer(probability, False)
            group.addLayer(probability)
            added.append(probability)
    return group, added
