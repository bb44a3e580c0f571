"""Third-party dependencies of the engine inside a user's QGIS.

QGIS ships numpy, GDAL and PyQt but not torch, rasterio or scikit-image. The plugin installs them
with pip into a per-Python-ABI folder in the user's QGIS profile. This module is the only place
that puts that folder on sys.path.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
import sysconfig
from pathlib import Path
from typing import Optional

# import name -> pip requirement. numpy<2: QGIS's GDAL bindings are built against numpy 1.x.
REQUIREMENTS: dict[str, str] = {
    "torch": "torch>=2.1",
    "rasterio": "rasterio>=1.3,<1.5",
    "skimage": "scikit-image>=0.21,<0.26",
    "shapely": "shapely>=2.0,<3",
}
# Pins for packages already in QGIS that pip would otherwise upgrade into the target folder.
CONSTRAINTS: tuple[str, ...] = ("numpy<2", "affine<3")
TORCH_INDEX_CPU = "https://download.pytorch.org/whl/cpu"
TORCH_INDEX_CUDA = "https://download.pytorch.org/whl/cu124"
DEPS_DIR_ENV = "FOOTPRINT_DEPS_DIR"


def abi_tag() -> str:
    """E.g. 'cpython-311-linux-x86_64': wheels built for one interpreter never leak into another."""
    return f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}".replace(".", "_")


def _profile_dir() -> Optional[Path]:
    try:
        from qgis.core import QgsApplication
    except ImportError:
        return None
    settings_dir = QgsApplication.qgisSettingsDirPath()
    return Path(settings_dir) if settings_dir else None


def dependency_dir() -> Path:
    """Folder that pip installs into: <QGIS profile>/python/footprint_dependencies/<abi>."""
    configured = os.environ.get(DEPS_DIR_ENV)
    if configured:
        base = Path(configured)
    else:
        profile = _profile_dir()
        if profile is not None:
            base = profile / "python" / "footprint_dependencies"
        else:
            base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "footprint_plugin" / "dependencies"
    return base / abi_tag()


def ensure_dependency_path() -> Optional[Path]:
    """Append the dependency folder to sys.path (once). Returns it, or None if it does not exist.

    Appended, not prepended: packages QGIS itself provides (numpy, GDAL) must keep winning.
    """
    folder = dependency_dir()
    if not folder.is_dir():
        return None
    entry = str(folder)
    if entry not in sys.path:
        sys.path.append(entry)
        importlib.invalidate_caches()
    return folder


def _is_importable(module_name: str) -> bool:
    if module_name in sys.modules:
        return sys.modules[module_name] is not None
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def missing_dependencies() -> list[str]:
    """pip names of the engine's packages that cannot be imported (without importing them)."""
    ensure_dependency_path()
    return [_pip_name(REQUIREMENTS[name]) for name in REQUIREMENTS if not _is_importable(name)]


def _pip_name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]


def install_hint(missing: Optional[list[str]] = None) -> str:
    """What to tell a user whose QGIS lacks the engine's packages."""
    missing = missing_dependencies() if missing is None else missing
    if not missing:
        return ""
    return (
        f"The Building Footprints engine needs Python packages that this QGIS lacks: {', '.join(missing)}. "
        "Install them from the menu Plugins > Building Footprints > Install dependencies… "
        f"(they go into {dependency_dir()}), or run: {shlex.join(pip_install_command(missing))} "
        "and restart QGIS."
    )


def python_executable() -> str:
    """The Python interpreter that QGIS embeds (sys.executable is often the QGIS binary itself)."""
    candidates = []
    exe = Path(sys.executable)
    if exe.name.lower().startswith("python"):
        candidates.append(exe)
    prefix = Path(sys.base_exec_prefix)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if os.name == "nt":
        candidates += [prefix / "python.exe", prefix / "python3.exe"]
    else:
        candidates += [prefix / "bin" / f"python{version}", prefix / "bin" / "python3"]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    return "python3"


def pip_install_command(packages: Optional[list[str]] = None, cuda: bool = False) -> list[str]:
    """pip command installing the engine's packages into dependency_dir(); CPU or CUDA build of torch."""
    wanted = packages if packages is not None else [REQUIREMENTS[name] for name in REQUIREMENTS]
    specs = []
    for package in wanted:
        spec = next((req for name, req in REQUIREMENTS.items() if package in (name, req, _pip_name(req))), package)
        specs.append(spec)
    command = [python_executable(), "-m", "pip", "install", "--upgrade", "--no-warn-script-location"]
    command += ["--target", str(dependency_dir())]
    if any(spec.startswith("torch") for spec in specs):
        command += ["--extra-index-url", TORCH_INDEX_CUDA if cuda else TORCH_INDEX_CPU]
    return command + specs + list(CONSTRAINTS)
