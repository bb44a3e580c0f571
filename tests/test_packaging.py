"""The plugin zip installs into a fresh QGIS profile, where `qgis_process.bin` lists and runs its algorithms."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.qgis_helpers import ALGORITHMS, REPO_ROOT, make_tiny_model

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import build_zip  # noqa: E402

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
needs_qgis_process = pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason="qgis_process.bin not installed")


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    return build_zip.build_zip(tmp_path_factory.mktemp("dist") / "building_footprints.zip")


@pytest.fixture(scope="module")
def config_root(plugin_zip, tmp_path_factory) -> Path:
    """A QGIS config root whose default profile has the plugin installed from the zip and enabled."""
    root = tmp_path_factory.mktemp("qgis_config")
    build_zip.deploy(plugin_zip, root / "profiles" / "default")
    return root


def run_qgis_process(config_root: Path, *args: str, models: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        QGIS_CUSTOM_CONFIG_PATH=str(config_root),
        # qgis_process runs the system Python; the venv's engine packages stand in for the per-profile folder.
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p.endswith("site-packages")),
        FOOTPRINT_USER_MODELS=str(models),
    )
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def test_zip_has_one_top_level_folder_and_no_dev_files(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {name.split("/")[0] for name in names} == {"building_footprints"}
    for required in ("__init__.py", "metadata.txt", "LICENSE", "footprint_plugin/core/pipeline.py"):
        assert f"building_footprints/{required}" in names, required
    forbidden = [n for n in names if "/tests/" in n or "__pycache__" in n or "/.venv/" in n or n.endswith(".pyc")]
    assert not forbidden, forbidden
    assert any(n.startswith("building_footprints/ui/") and n.endswith(".ui") for n in names), "no Qt Designer files"


@needs_qgis_process
def test_qgis_process_lists_the_algorithms_of_the_installed_zip(config_root, tmp_path):
    installed = config_root / "profiles" / "default" / "python" / "plugins" / "building_footprints"
    assert (installed / "metadata.txt").is_file()
    result = run_qgis_process(config_root, "list", models=tmp_path, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    listed = {line.split()[0] for line in output.splitlines() if line.strip().startswith("footprint:")}
    missing = set(ALGORITHMS) - listed
    assert not missing, f"{sorted(missing)} missing from qgis_process list:\n{output[-3000:]}"


@needs_qgis_process
def test_qgis_process_runs_detect_buildings(config_root, shared_data, tmp_path):
    models = tmp_path / "models"
    make_tiny_model(models)
    raster = sorted((shared_data / "eo" / "hotosm_kampala" / "tiles").glob("OAM-*-19.tif"))[0]
    out = tmp_path / "out"
    out.mkdir()
    result = run_qgis_process(
        config_root, "run", "footprint:detectbuildings", "--json", "--",
        f"INPUT={raster}", "MODEL=tiny_test_model", "DEVICE=cpu", "THRESHOLD=0.01", "MIN_AREA=1",
        f"OUTPUT={out / 'buildings.gpkg'}", f"PROBABILITY={out / 'probability.tif'}",
        models=models, cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = json.loads(result.stdout[result.stdout.index("{"):])["results"]
    assert Path(results["OUTPUT"]) == out / "buildings.gpkg" and (out / "buildings.gpkg").is_file()
    assert (out / "probability.tif").is_file()
    assert results["N_BUILDINGS"] > 0
