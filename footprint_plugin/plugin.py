"""FootprintPlugin: registers the Processing provider and adds the toolbar button and menu entries."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from qgis.core import Qgis, QgsApplication, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtGui import QIcon

try:
    from qgis.PyQt.QtGui import QAction  # Qt6 / QGIS 4
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt5 / QGIS 3

from . import deps
from .core.zoo.modelcard import LEGACY_MODELS_ENV
from .processing.base import ICON_PATH

MENU = "&Building Footprints"
MESSAGE_DELAY_MS = 300
TITLE = "Building Footprints"


class FootprintPlugin:
    """QGIS plugin object created by classFactory."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.provider = None
        self.actions: list[QAction] = []
        self.toolbar = None
        self.detect_action: Optional[QAction] = None
        self._dialogs: dict[str, Any] = {}
        self.last_run = None

    # --- Processing -------------------------------------------------------------------------------------
    def initProcessing(self) -> None:
        """Register the provider (also called by QGIS on its own for headless qgis_process runs)."""
        if self.provider is not None:
            return
        deps.ensure_dependency_path()
        # Models go to core.zoo.modelcard.user_model_dir(), shared with the CLI; models that older versions
        # trained into the profile stay listed (read-only) through LEGACY_MODELS_ENV.
        settings_dir = QgsApplication.qgisSettingsDirPath()
        legacy = Path(settings_dir) / "footprint_plugin" / "models" if settings_dir else None
        if legacy is not None and legacy.is_dir() and not os.environ.get(LEGACY_MODELS_ENV):
            os.environ[LEGACY_MODELS_ENV] = str(legacy)
        from .processing.provider import FootprintProvider

        self.provider = FootprintProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    # --- GUI --------------------------------------------------------------------------------------------
    def initGui(self) -> None:
        self.initProcessing()
        icon = QIcon(str(ICON_PATH))
        main_window = self.iface.mainWindow()
        self.detect_action = self._add_action(icon, "Detect buildings", self.show_detect_dialog, main_window)
        self._add_action(icon, "Train / fine-tune model…", self.show_train_dialog, main_window)
        self._add_action(icon, "Improve for this area…", self.show_improve_dialog, main_window)
        self._add_action(QIcon(), "Model manager…", self.show_model_manager, main_window)
        self._add_action(QIcon(), "Install dependencies…", self.show_dependency_installer, main_window)
        self.toolbar = self.iface.addToolBar(TITLE)
        self.toolbar.setObjectName("BuildingFootprintsToolbar")
        self.toolbar.addAction(self.detect_action)
        # Raster > Building Footprints > Detect buildings, as the README says.
        if hasattr(self.iface, "addPluginToRasterMenu"):
            self.iface.addPluginToRasterMenu(MENU, self.detect_action)
            self._raster_menu = True
        # torch takes seconds to import: do it now in the background, not on the first click.
        from .gui import warmup

        warmup.start()

    def _add_action(self, icon: QIcon, text: str, slot: Any, parent: Any) -> QAction:
        action = QAction(icon, text, parent)
        action.setObjectName("footprint_" + "".join(c for c in text.lower() if c.isalnum()))
        action.triggered.connect(slot)
        self.iface.addPluginToMenu(MENU, action)
        self.actions.append(action)
        return action

    def unload(self) -> None:
        for run in list(self._active_runs()):
            run.cancel()
        for dialog in self._dialogs.values():
            dialog.close()
            dialog.deleteLater()
        self._dialogs.clear()
        if getattr(self, "_raster_menu", False) and self.detect_action is not None:
            self.iface.removePluginRasterMenu(MENU, self.detect_action)
            self._raster_menu = False
        for action in self.actions:
            self.iface.removePluginMenu(MENU, action)
            action.deleteLater()
        self.actions.clear()
        self.detect_action = None
        if self.toolbar is not None:
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    @staticmethod
    def _active_runs() -> list:
        from .gui.tasks import running_runs

        return running_runs()

    def _message(self, text: str, level: Any = Qgis.MessageLevel.Info, duration: int = 8) -> None:
        self.iface.messageBar().pushMessage(TITLE, text, level=level, duration=duration)

    def _dependencies_ready(self) -> bool:
        missing = deps.missing_dependencies()
        if missing:
            self._message(deps.install_hint(missing), Qgis.MessageLevel.Warning, 0)
            self.show_dependency_installer()
            return False
        return True

    # --- Detect -----------------------------------------------------------------------------------------
    def show_detect_dialog(self) -> None:
        from qgis.core import QgsProject

        layer = self.iface.activeLayer()
        if not isinstance(layer, QgsRasterLayer):
            # The dialog has its own input picker: start from any raster of the project.
            rasters = [lyr for lyr in QgsProject.instance().mapLayers().values() if isinstance(lyr, QgsRasterLayer)]
            if not rasters:
                self._message(
                    "Add a raster layer (a GeoTIFF, a VRT or a web map) to the project first: "
                    "Detect buildings finds buildings in a raster.",
                    Qgis.MessageLevel.Warning,
                )
                return
            layer = rasters[0]
        if not self._dependencies_ready():
            return
        from .gui.detect_dialog import DetectDialog

        dialog = DetectDialog(layer, self.iface.mainWindow(), canvas=self.iface.mapCanvas())
        dialog.accepted.connect(lambda: self.start_detection(dialog))
        self._replace_dialog("detect", dialog)
        dialog.show()

    def _replace_dialog(self, key: str, dialog: Any) -> None:
        old = self._dialogs.pop(key, None)
        if old is not None:
            old.close()
            old.deleteLater()
        self._dialogs[key] = dialog

    def start_detection(self, dialog: Any) -> Any:
        """Run footprint:detectbuildings for the dialog's parameters in the task manager.

        The outputs go where the dialog's destination widgets say (temporary layer, file, database
        table); the task loads them with the same post-processing as the toolbox (processing/results.py).
        """
        from .gui.tasks import AlgorithmRun

        try:
            parameters = dialog.accepted_parameters or dialog.parameters()
        except ValueError as exc:
            self._message(str(exc), Qgis.MessageLevel.Warning)
            return None
        layer_name = dialog.layer.name()
        self.last_run = AlgorithmRun(
            "footprint:detectbuildings",
            parameters,
            lambda ok, results, run: self._detection_finished(ok, results, run, layer_name),
            description=f"Detect buildings in {layer_name}",
        ).start()
        self._message(f"Detecting buildings in {layer_name}… (progress and cancel in the task manager)", duration=4)
        return self.last_run

    def _detection_finished(self, ok: bool, results: dict[str, Any], run: Any, layer_name: str) -> None:
        from .gui.messages import detection_report, log_details

        # One message in the bar per run; warnings and notes go to the Log Messages panel.
        message = detection_report(ok, run.canceled(), results, run, layer_name)
        if ok and not run.canceled():
            log_details(run, layer_name)
        # After QGIS's own "Task complete" notice, which it pushes once this task's status changes: ours
        # must land above it, not under it.
        QTimer.singleShot(MESSAGE_DELAY_MS, lambda: self._message(*message))

    # --- Other dialogs ----------------------------------------------------------------------------------
    def show_improve_dialog(self) -> None:
        """The guided loop (gui/improve_dialog.py) from the last finished Detect run."""
        run = self.last_run
        if run is None or not run.done or not run.succeeded:
            self._message(
                "Run Detect buildings first (with a probability raster): Improve for this area starts from its result.",
                Qgis.MessageLevel.Warning,
            )
            return
        from .gui.improve_dialog import ImproveDialog

        dialog = ImproveDialog(run, self.iface, self.iface.mainWindow())
        self._replace_dialog("improve", dialog)
        dialog.show()

    def show_train_dialog(self) -> None:
        if not self._dependencies_ready():
            return
        from .gui.train_dialog import TrainDialog

        dialog = TrainDialog(self.iface, self.iface.mainWindow())
        self._replace_dialog("train", dialog)
        dialog.show()

    def show_model_manager(self) -> None:
        from .gui.model_manager import ModelManagerDialog

        dialog = ModelManagerDialog(self.iface.mainWindow())
        self._replace_dialog("models", dialog)
        dialog.show()

    def show_dependency_installer(self) -> None:
        from .gui.dependency_installer import DependencyInstallerDialog

        if isinstance(self._dialogs.get("deps"), DependencyInstallerDialog) and self._dialogs["deps"].isVisible():
            self._dialogs["deps"].raise_()
            return
        dialog = DependencyInstallerDialog(self.iface.mainWindow())
        self._replace_dialog("deps", dialog)
        dialog.show()
