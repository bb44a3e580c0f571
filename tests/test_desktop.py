"""End to end in the real QGIS desktop under Xvfb (`make test-desktop`): deployed plugin, a project with a
real raster, the toolbar action, the dialog accepted, layers added, screenshots saved for a human to look at."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.qgis_helpers import REPO_ROOT, make_tiny_model

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import build_zip  # noqa: E402

pytestmark = [
    pytest.mark.desktop,
    pytest.mark.skipif(
        not (shutil.which("qgis") and shutil.which("xvfb-run") and shutil.which("import")),
        reason="needs qgis, xvfb-run and imagemagick's import",
    ),
]
ARTIFACTS = Path(os.environ.get("FOOTPRINT_ARTIFACTS", REPO_ROOT / ".cache" / "test_artifacts")) / "desktop"
RASTER = "eo/hotosm_banepa/tiles/OAM-386691-220242-19.tif"
LABELS = "eo/hotosm_banepa/labels.geojson"
SAR = "sar/rotterdam_capella/sar_hh.tif"


def _write_project(raster: Path, path: Path) -> Path:
    from qgis.core import QgsProject, QgsRasterLayer

    project = QgsProject()
    layer = QgsRasterLayer(str(raster), raster.stem)
    assert layer.isValid()
    project.addMapLayer(layer)
    project.setCrs(layer.crs())
    assert project.write(str(path))
    return path


def test_detect_buildings_in_real_qgis_desktop(qgis_app, shared_data, tmp_path):
    from footprint_plugin.core.zoo.modelcard import default_model_name

    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    profiles = tmp_path / "profiles_root"
    build_zip.deploy(build_zip.build_zip(tmp_path / "building_footprints.zip"), profiles / "profiles" / "default")
    models = tmp_path / "models"
    if default_model_name() is None:
        make_tiny_model(models)  # no bundled model yet: random weights still exercise the whole path
    project = _write_project(shared_data / RASTER, tmp_path / "desktop_test.qgz")
    env = dict(
        os.environ,
        FOOTPRINT_DESKTOP_ARTIFACTS=str(ARTIFACTS),
        FOOTPRINT_USER_MODELS=str(models),
        FOOTPRINT_DESKTOP_LABELS=str(shared_data / LABELS),
        FOOTPRINT_DESKTOP_SAR=str(shared_data / SAR),
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p.endswith("site-packages")),
    )
    env.pop("QT_QPA_PLATFORM", None)  # a real X display (Xvfb), not offscreen
    command = [
        "xvfb-run",
        "-a",
        "-s",
        "-screen 0 1440x900x24",
        "qgis",
        "--noversioncheck",
        "--nologo",
        "--profiles-path",
        str(profiles),
        "--code",
        str(REPO_ROOT / "tests" / "desktop_driver.py"),
        str(project),
    ]
    # Own process group: on a time-out, kill QGIS too, not only the xvfb-run wrapper.
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        process.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"QGIS did not quit within 420 s; status so far: {_status_text()}")
    status = json.loads(_status_text())
    print(json.dumps(status, indent=1))
    assert status["ok"], status
    raster = Path(RASTER).stem
    assert [name.split(" (")[0] for name in status["group_layers"]] == [
        f"Buildings — {raster}",
        f"Building probability — {raster}",
    ], status["group_layers"]
    # Two runs on one raster: every layer name differs (the second run's get a number).
    names = [n for n in status["all_layer_names"] if n.startswith(("Buildings —", "Building probability —"))]
    assert len(names) == 4 and len(set(names)) == 4, names
    # Evaluate on Detect's temporary output: scores, the predicted layer's CRS, fixed colours.
    evaluation = status["evaluation"]
    assert evaluation["succeeded"], evaluation
    assert evaluation["scores"]["TP"] + evaluation["scores"]["FP"] > 0, evaluation
    kinds = {name.split(" — ")[0]: (crs, colour) for name, crs, colour in evaluation["layers"]}
    assert set(kinds) == {"True positives", "False positives", "False negatives (missed)"}, kinds
    assert {crs for crs, _ in kinds.values()} == {evaluation["predicted_crs"]}
    assert kinds["True positives"][1] == "#2ca02c" and kinds["False positives"][1] == "#d62728"
    assert kinds["False negatives (missed)"][1] == "#ff7f0e"
    # The input picker lists the rasters; on SAR the EO models are greyed out and the dialog says why.
    sar = status["sar_dialog"]
    assert any(raster in text for text in sar["inputs"]), sar
    assert not sar["detect_enabled"] and all("not for this raster" in text for text in sar["models"]), sar
    assert "No SAR model is installed" in sar["message"] and "Train" in sar["message"], sar
    assert status["toolbox_group_layers"] == ["Buildings", "Building probability"], status
    assert status["toolbox_renderers"] == ["singleSymbol", "singlebandpseudocolor"], status
    for name in (
        "1_detect_dialog.png",
        "2_result.png",
        "5_toolbox_result.png",
        "6_evaluation.png",
        "7_sar_refusal.png",
    ):
        assert (ARTIFACTS / name).stat().st_size > 10_000, f"{name} missing or empty"


def _status_text() -> str:
    path = ARTIFACTS / "status.json"
    return path.read_text() if path.exists() else "{}"


def test_cli_refuses_an_eo_model_on_sar(shared_data, tmp_path):
    """The CLI gives the same refusal as the dialog (engine/pipeline.check_sensor), and writes nothing."""
    done = subprocess.run(
        [sys.executable, "-m", "footprint_plugin", "detect", str(shared_data / SAR), "--out", str(tmp_path / "b.gpkg")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "No SAR model is installed" in done.stderr + done.stdout, done.stderr
    assert "Train" in done.stderr + done.stdout and not (tmp_path / "b.gpkg").exists()
