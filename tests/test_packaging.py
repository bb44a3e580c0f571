"""The plugin zip installs into a fresh QGIS profile, and qgis_process sees its algorithms there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import build_zip  # noqa: E402

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    return build_zip.build_zip(tmp_path_factory.mktemp("dist") / "building_footprints.zip")


def test_zip_has_one_top_level_folder_and_no_dev_files(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {name.split("/")[0] for name in names} == {"building_footprints"}
    for required in ("__init__.py", "metadata.txt", "LICENSE", "footprint_plugin/core/pipeline.py"):
        assert f"building_footprints/{required}" in names, required
    forbidden = [n for n in names if "/tests/" in n or "__pycache__" in n or "/.venv/" in n or n.endswith(".pyc")]
    assert not forbidden, forbidden
    assert any(n.startswith("building_footprints/ui/") and n.endswith(".ui") for n in names), "no Qt Designer files"


def qgis_env(config_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        QT_QPA_PLATFORM="offscreen",
        QGIS_CUSTOM_CONFIG_PATH=str(config_root),
        # qgis_process runs the system Python; make the venv's engine packages visible to it.
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p.endswith("site-packages")),
        FOOTPRINT_USER_MODELS=str(config_root / "models"),
    )
    return env


def deploy_to_temp_profile(plugin_zip: Path, tmp_path: Path) -> Path:
    config_root = tmp_path / "qgis_config"
    build_zip.deploy(plugin_zip, config_root / "profiles" / "default")
    return config_root


@pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason="qgis_process.bin not installed")
def test_zip_installs_into_a_profile_and_qgis_process_lists_algorithms(plugin_zip, tmp_path):
    config_root = deploy_to_temp_profile(plugin_zip, tmp_path)
    installed = config_root / "profiles" / "default" / "python" / "plugins" / "building_footprints"
    assert (installed / "metadata.txt").is_file()
    result = subprocess.run(
        [QGIS_PROCESS, "list"], env=qgis_env(config_root), capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    algorithms = sorted({line.split()[0] for line in output.splitlines() if line.strip().startswith("footprint:")})
    for expected in (
        "footprint:detectbuildings",
        "footprint:batchdetect",
        "footprint:trainmodel",
        "footprint:finetunemodel",
        "footprint:evaluatefootprints",
        "footprint:regularizefootprints",
    ):
        assert expected in algorithms, f"{expected} missing from qgis_process list:\n{output[-3000:]}"
