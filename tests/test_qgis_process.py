"""`qgis_process.bin run footprint:detectbuildings` from a shell, with the plugin deployed to a fresh profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.qgis_helpers import REPO_ROOT, make_tiny_model

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import build_zip  # noqa: E402

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
pytestmark = pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason="qgis_process.bin not installed")


@pytest.fixture(scope="module")
def deployed_profile(tmp_path_factory) -> Path:
    """A QGIS config root whose default profile has the plugin installed from the zip and enabled."""
    root = tmp_path_factory.mktemp("qgis_config")
    plugin_zip = build_zip.build_zip(root / "building_footprints.zip")
    build_zip.deploy(plugin_zip, root / "profiles" / "default")
    return root


def test_qgis_process_runs_detect_buildings(deployed_profile, shared_data, tmp_path):
    models = tmp_path / "models"
    make_tiny_model(models)
    raster = sorted((shared_data / "eo" / "hotosm_kampala" / "tiles").glob("OAM-*-19.tif"))[0]
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        QGIS_CUSTOM_CONFIG_PATH=str(deployed_profile),
        # qgis_process runs the system Python; the venv's engine packages stand in for the per-profile folder.
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p.endswith("site-packages")),
        FOOTPRINT_USER_MODELS=str(models),
    )
    out = tmp_path / "out"
    out.mkdir()
    command = [
        QGIS_PROCESS, "run", "footprint:detectbuildings", "--json", "--",
        f"INPUT={raster}", "MODEL=tiny_test_model", "DEVICE=cpu", "THRESHOLD=0.01", "MIN_AREA=1",
        f"OUTPUT={out / 'buildings.gpkg'}", f"PROBABILITY={out / 'probability.tif'}",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    results = payload["results"]
    assert Path(results["OUTPUT"]) == out / "buildings.gpkg" and (out / "buildings.gpkg").is_file()
    assert (out / "probability.tif").is_file()
    assert results["N_BUILDINGS"] > 0
