"""Runs inside the real QGIS desktop (`qgis --code tests/desktop_driver.py`), driven by tests/test_desktop.py.

Triggers the plugin's "Detect buildings" action on the project's raster, accepts the dialog, waits for the
task's layers, saves screenshots and a status.json into $FOOTPRINT_DESKTOP_ARTIFACTS, then quits QGIS.
"""

import json
import os
import subprocess
import time
import traceback
from pathlib import Path

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QDialogButtonBox
from qgis.utils import iface, plugins

ARTIFACTS = Path(os.environ["FOOTPRINT_DESKTOP_ARTIFACTS"])
STATUS = {"ok": False, "steps": []}
STATE = {}


def write_status():
    (ARTIFACTS / "status.json").write_text(json.dumps(STATUS, indent=1, default=str))


def log(message):
    STATUS["steps"].append(f"{time.strftime('%H:%M:%S')} {message}")
    write_status()


def screenshot(name):
    subprocess.run(["import", "-window", "root", str(ARTIFACTS / name)], check=False, timeout=60)
    log(f"screenshot {name}")


def finish(ok, error=""):
    STATUS["ok"] = ok
    if error:
        STATUS["error"] = error
    write_status()
    # Clear the project first: temporary layers would otherwise raise a modal "are you sure?" on exit.
    QgsProject.instance().removeAllMapLayers()
    QgsProject.instance().clear()
    QgsProject.instance().setDirty(False)
    QTimer.singleShot(500, iface.actionExit().trigger)


def guarded(step):
    def wrapper():
        try:
            step()
        except Exception:  # noqa: BLE001 - report any failure to the test instead of hanging QGIS
            finish(False, traceback.format_exc())

    return wrapper


@guarded
def start():
    plugin = plugins.get("building_footprints")
    if plugin is None:
        return finish(False, f"plugin not loaded; loaded plugins: {sorted(plugins)}")
    rasters = [layer for layer in QgsProject.instance().mapLayers().values() if isinstance(layer, QgsRasterLayer)]
    if not rasters:
        return finish(False, "the project has no raster layer")
    STATE.update(plugin=plugin, layer=rasters[0])
    iface.setActiveLayer(rasters[0])
    iface.mapCanvas().setExtent(rasters[0].extent())
    log(f"triggering Detect buildings on {rasters[0].name()}")
    plugin.detect_action.trigger()
    QTimer.singleShot(2000, accept_dialog)


@guarded
def accept_dialog():
    dialog = STATE["plugin"]._dialogs.get("detect")
    if dialog is None or not dialog.isVisible():
        return finish(False, "the Detect buildings dialog did not open")
    STATUS["dialog_model"] = dialog.modelCombo.currentText()
    STATUS["dialog_device"] = dialog.deviceInfo.text()
    screenshot("1_detect_dialog.png")
    dialog.set_destinations(str(ARTIFACTS / "buildings.gpkg"), str(ARTIFACTS / "probability.tif"))
    dialog.buttonBox.button(QDialogButtonBox.StandardButton.Ok).click()
    STATE["started"] = time.monotonic()
    log("dialog accepted")
    QTimer.singleShot(500, wait_for_task)


@guarded
def wait_for_task():
    run = STATE["plugin"].last_run
    if run is None or not run.done:
        elapsed = time.monotonic() - STATE["started"]
        if int(elapsed * 2) % 20 == 0:
            tasks = [
                (t.description(), int(t.status()), round(t.progress(), 1)) for t in QgsApplication.taskManager().tasks()
            ]
            log(f"waiting {elapsed:.0f} s: progress {run.feedback.progress() if run else None}, tasks {tasks}")
        if elapsed > 420:
            return finish(False, "the detection task did not finish in 7 minutes")
        QTimer.singleShot(500, wait_for_task)
        return
    STATUS["task_succeeded"] = run.succeeded
    STATUS["results"] = {k: v for k, v in run.results.items() if isinstance(v, (int, float, str))}
    group = QgsProject.instance().layerTreeRoot().findGroup(STATE["layer"].name())
    STATUS["group_layers"] = [node.layer().name() for node in group.findLayers()] if group else []
    log("task finished")
    iface.mapCanvas().setExtent(STATE["layer"].extent())
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(4000, take_result_screenshot)


@guarded
def take_result_screenshot():
    screenshot("2_result.png")
    STATE["plugin"].show_model_manager()
    QTimer.singleShot(1500, show_train_dialog)


@guarded
def show_train_dialog():
    screenshot("3_model_manager.png")
    STATE["plugin"]._dialogs["models"].close()
    STATE["plugin"].show_train_dialog()
    QTimer.singleShot(1500, last_screenshot)


@guarded
def last_screenshot():
    screenshot("4_train_dialog.png")
    STATE["plugin"]._dialogs["train"].close()
    QTimer.singleShot(500, toolbox_run)


@guarded
def toolbox_run():
    """The toolbox's own result handling (runAndLoadResults -> handleAlgorithmResults): the same styled group."""
    import processing

    root = QgsProject.instance().layerTreeRoot()
    first = root.findGroup(STATE["layer"].name())
    if first is not None:
        first.setItemVisibilityChecked(False)  # the screenshot shows the toolbox run's layers only
    processing.runAndLoadResults(
        "footprint:detectbuildings",
        {"INPUT": STATE["layer"].id(), "OUTPUT": "TEMPORARY_OUTPUT", "PROBABILITY": "TEMPORARY_OUTPUT"},
    )
    group = root.findGroup(STATE["layer"].name() + " (2)")
    STATUS["toolbox_group_layers"] = (
        [node.layer().name().split(" — ")[0] for node in group.findLayers()] if group else []
    )
    STATUS["all_layer_names"] = sorted(layer.name() for layer in QgsProject.instance().mapLayers().values())
    STATE["temporary_buildings"] = (
        next((n.layer() for n in group.findLayers() if n.layer().providerType() == "memory"), None) if group else None
    )
    STATUS["toolbox_renderers"] = [node.layer().renderer().type() for node in group.findLayers()] if group else []
    log("toolbox run finished")
    iface.mapCanvas().setExtent(STATE["layer"].extent())
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(4000, toolbox_screenshot)


@guarded
def toolbox_screenshot():
    screenshot("5_toolbox_result.png")
    evaluate_temporary_output()


@guarded
def evaluate_temporary_output():
    """Evaluate on Detect's temporary (memory) output, as a task like the toolbox runs it (worker thread)."""
    from building_footprints.footprint_plugin.gui.tasks import AlgorithmRun
    from qgis.core import QgsProcessingOutputLayerDefinition, QgsVectorLayer

    predicted = STATE["temporary_buildings"]
    reference = QgsVectorLayer(os.environ["FOOTPRINT_DESKTOP_LABELS"], "reference labels", "ogr")
    QgsProject.instance().addMapLayer(reference)
    parameters = {
        "PREDICTED": predicted.id(),
        "REFERENCE": reference.id(),
        **{
            name: QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", QgsProject.instance())
            for name in ("TRUE_POSITIVES", "FALSE_POSITIVES", "FALSE_NEGATIVES")
        },
    }
    STATE["evaluation"] = AlgorithmRun("footprint:evaluatefootprints", parameters, lambda *_: None).start()
    STATE["started"] = time.monotonic()
    QTimer.singleShot(500, evaluation_done)


@guarded
def evaluation_done():
    run = STATE["evaluation"]
    if not run.done:
        if time.monotonic() - STATE["started"] > 120:
            return finish(False, "the evaluation task did not finish in 2 minutes")
        QTimer.singleShot(500, evaluation_done)
        return
    STATUS["evaluation"] = {
        "succeeded": run.succeeded,
        "error": "" if run.succeeded else run.error_text(),
        "scores": {k: run.results.get(k) for k in ("TP", "FP", "FN")},
        "layers": [
            (layer.name(), layer.crs().authid(), layer.renderer().symbol().color().name()) for layer in run.loaded
        ],
        "predicted_crs": STATE["temporary_buildings"].crs().authid(),
    }
    log("evaluation finished")
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(3000, sar_dialog)


@guarded
def sar_dialog():
    """The input picker, switched to a SAR raster: EO models greyed out, the refusal in the dialog."""
    screenshot("6_evaluation.png")
    sar = QgsRasterLayer(os.environ["FOOTPRINT_DESKTOP_SAR"], "capella slc")
    QgsProject.instance().addMapLayer(sar)
    iface.setActiveLayer(STATE["layer"])
    STATE["plugin"].detect_action.trigger()
    dialog = STATE["plugin"]._dialogs["detect"]
    inputs = [dialog.inputCombo.itemText(i) for i in range(dialog.inputCombo.count())]
    dialog.set_input(sar)
    STATUS["sar_dialog"] = {
        "inputs": inputs,
        "models": [dialog.modelCombo.itemText(i) for i in range(dialog.modelCombo.count())],
        "message": dialog.cardBrowser.toPlainText(),
        "detect_enabled": dialog.buttonBox.button(QDialogButtonBox.StandardButton.Ok).isEnabled(),
    }
    QTimer.singleShot(1500, sar_screenshot)


@guarded
def sar_screenshot():
    screenshot("7_sar_refusal.png")
    STATE["plugin"]._dialogs["detect"].close()
    evaluation = STATUS.get("evaluation", {})
    finish(
        bool(STATUS.get("task_succeeded"))
        and len(STATUS["group_layers"]) == 2
        and STATUS.get("toolbox_group_layers") == ["Buildings", "Building probability"]
        and bool(evaluation.get("succeeded"))
    )


def record_message(message, tag, level):
    if level >= 1:  # warnings and errors from QGIS, Python and Processing end up in the status file
        STATUS.setdefault("qgis_messages", []).append(f"[{tag}] {message[-2000:]}")
        write_status()


ARTIFACTS.mkdir(parents=True, exist_ok=True)
QgsApplication.messageLog().messageReceived.connect(record_message)
log("driver loaded")
QTimer.singleShot(3000, start)
