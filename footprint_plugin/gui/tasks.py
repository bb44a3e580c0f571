"""Run our Processing algorithms in QGIS's task manager and deliver results on the main thread."""

from __future__ import annotations

import traceback
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

from qgis.core import (
    QgsApplication,
    QgsMapLayer,
    QgsMessageLog,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProject,
    QgsTask,
)

from ..processing import results as result_handling

FinishedCallback = Callable[[bool, dict[str, Any], "AlgorithmRun"], None]
LOG_TAG = "Building Footprints"


class RecordingFeedback(QgsProcessingFeedback):
    """Keeps the warnings an algorithm pushed, so the GUI can show each once in the message bar."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[str] = []

    def pushWarning(self, warning: str) -> None:  # noqa: N802 - QGIS override
        self.warnings.append(warning)
        super().pushWarning(warning)


class AlgorithmTask(QgsTask):
    """QgsProcessingAlgRunnerTask's steps (prepare, runPrepared on the worker, postProcess on the main thread),
    except that a cancel ends the task normally: QGIS then never reports "Task failed" for a canceled run."""

    def __init__(
        self,
        algorithm: QgsProcessingAlgorithm,
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        feedback: QgsProcessingFeedback,
        description: str,
        on_done: Callable[[bool, dict[str, Any]], None],
    ) -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.algorithm = algorithm
        self.parameters = parameters
        self.context = context
        self.feedback = feedback
        self.on_done = on_done
        self.ok = False
        self.results: dict[str, Any] = {}
        feedback.progressChanged.connect(self.setProgress)
        self.prepared = algorithm.prepare(parameters, context, feedback)

    def run(self) -> bool:  # worker thread
        if not self.prepared:
            return False
        try:
            self.results = dict(self.algorithm.runPrepared(self.parameters, self.context, self.feedback) or {})
            self.ok = not self.feedback.isCanceled()
        except Exception as exc:  # noqa: BLE001 - a QgsProcessingException carries the user's message
            self.ok = False
            if not self.feedback.isCanceled():
                message = str(exc) or traceback.format_exc()
                self.feedback.reportError(message, True)
        # A canceled run is an ordinary end, not a failure.
        return self.ok or self.feedback.isCanceled()

    def cancel(self) -> None:
        self.feedback.cancel()
        super().cancel()

    def finished(self, result: bool) -> None:  # main thread
        # The task manager deletes this task soon; a progress signal still queued from the worker
        # must not reach it afterwards (that crashed QGIS now and then).
        try:
            self.feedback.progressChanged.disconnect(self.setProgress)
        except (TypeError, RuntimeError):
            pass
        if self.ok:
            try:
                self.results.update(self.algorithm.postProcess(self.context, self.feedback) or {})
            except Exception as exc:  # noqa: BLE001 - loading results must not lose the run
                QgsMessageLog.logMessage(f"Post-processing failed: {exc}", LOG_TAG)
        self.on_done(self.ok, self.results)


class AlgorithmRun:
    """One algorithm run as a task; `on_finished(ok, results, run)` runs on the main thread.

    The context and feedback live here, because the task only borrows them. On success the outputs
    marked for loading are added to the project with the same post-processors the toolbox runs
    (processing/results.py), before `on_finished` is called; `loaded` lists them.
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
        self.feedback = RecordingFeedback()
        self.log: list[str] = []
        self.task: Optional[AlgorithmTask] = AlgorithmTask(
            algorithm, parameters, self.context, self.feedback, description or algorithm.displayName(), self._executed
        )
        self.on_finished = on_finished
        self.done = False
        self.succeeded = False
        self.results: dict[str, Any] = {}
        self.loaded: list[QgsMapLayer] = []

    def start(self) -> AlgorithmRun:
        _RUNNING.add(self)
        QgsApplication.taskManager().addTask(self.task)
        return self

    def cancel(self) -> None:
        if not self.done:
            self.feedback.cancel()
            if self.task is not None:
                self.task.cancel()

    def canceled(self) -> bool:
        return self.feedback.isCanceled()

    @property
    def warnings(self) -> list[str]:
        return list(self.feedback.warnings)

    def _executed(self, successful: bool, results: dict[str, Any]) -> None:
        self.done = True
        self.succeeded = bool(successful) and not self.feedback.isCanceled()
        self.results = dict(results or {})
        self.task = None  # the task manager deletes it
        _RUNNING.discard(self)
        # Keep finished runs (their context, feedback and algorithm) alive a while: QGIS may still
        # deliver queued events that refer to them after the task itself is gone.
        _FINISHED.append(self)
        if self.succeeded:
            self.loaded = result_handling.load_outputs(self.context, self.feedback)
        self.on_finished(self.succeeded, self.results, self)

    def error_text(self) -> str:
        """The algorithm's error messages, for the message bar."""
        text = self.feedback.textLog() if hasattr(self.feedback, "textLog") else ""
        errors = [line for line in text.splitlines() if line.strip()]
        return errors[-1] if errors else "see the log messages panel (Processing) for details"


# Runs in flight, kept alive until their task reports back (the task manager owns the tasks themselves).
_RUNNING: set[AlgorithmRun] = set()
_FINISHED: deque[AlgorithmRun] = deque(maxlen=32)


def running_runs() -> list[AlgorithmRun]:
    return list(_RUNNING)


def temporary_output(name: str) -> str:
    """A fresh path in the Processing temporary folder."""
    folder = Path(QgsProcessingUtils.tempFolder()) / f"footprint_{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)
