"""Architecture rules: the engine stays free of QGIS/Qt, and GUI code stays Qt6/QGIS 4 compatible."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "footprint_plugin" / "core"
FORBIDDEN_IN_CORE = ("qgis", "PyQt5", "PyQt6", "PyQt4", "sip", "processing")
QT_FACING = [ROOT / "__init__.py", *sorted((ROOT / "footprint_plugin").rglob("*.py"))]
QT_FACING = [p for p in QT_FACING if CORE not in p.parents]


def _imported_modules(path: Path) -> list[tuple[int, str, int]]:
    """(line, absolute-or-relative module name, relative level) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


def test_core_modules_never_import_qgis_or_qt():
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) >= 5, "the engine package looks empty"
    offenders = []
    for path in modules:
        for line, name, level in _imported_modules(path):
            top = name.split(".")[0]
            if level == 0 and top in FORBIDDEN_IN_CORE:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            # A relative import climbing out of core/ would reach gui/ or processing/.
            depth_in_core = len(path.relative_to(CORE).parts) - 1
            if level > depth_in_core + 1:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports outside core: {'.' * level}{name}")
    assert not offenders, "core must stay free of QGIS/Qt:\n" + "\n".join(offenders)


def test_core_import_graph_loads_no_qgis_at_runtime():
    """Import every core module in a fresh interpreter that refuses qgis/PyQt imports."""
    names = [
        "footprint_plugin.core." + ".".join(p.relative_to(CORE).with_suffix("").parts)
        for p in sorted(CORE.rglob("*.py"))
        if p.name != "__init__.py"
    ]
    script = f"""
import importlib, importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {FORBIDDEN_IN_CORE!r}:
            raise ImportError('core imported forbidden module ' + name)
sys.meta_path.insert(0, Refuse())
for name in {names!r}:
    importlib.import_module(name)
bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_IN_CORE!r}]
assert not bad, bad
print('ok', len({names!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def _qt_namespaces() -> dict[str, object]:
    from qgis import core, gui
    from qgis.PyQt import QtCore, QtGui, QtWidgets

    namespaces: dict[str, object] = {}
    for module in (QtCore, QtGui, QtWidgets, core, gui):
        for name in dir(module):
            if name.startswith(("Q", "Qgs", "Qgis")):
                namespaces.setdefault(name, getattr(module, name))
    return namespaces


PYQT5_ONLY_PATTERNS = {
    r"\bexec_\(": "use exec() (exec_ is gone in PyQt6)",
    r"^\s*(from|import)\s+PyQt[45]\b": "import Qt through qgis.PyQt",
    r"^\s*(from|import)\s+sip\b": "sip is not available on QGIS 4; use qgis.PyQt.sip if at all",
    r"\bQString\s*\(|import[^\n]*\bQString\b|\bQVariant\s*\(": "QString/QVariant() wrappers do not exist in PyQt6",
    r"from\s+qgis\.PyQt\.QtWidgets\s+import\s+[^\n]*\bQAction\b": "QAction lives in QtGui on Qt6: import it with a fallback",
}


def _code_lines(path: Path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.split("#", 1)[0]
        if stripped.strip():
            yield number, stripped


def test_no_pyqt5_only_patterns_in_gui_code(qgis_app):
    namespaces = _qt_namespaces()
    attribute_use = re.compile(r"\b(Q[A-Za-z0-9]*|Qgs[A-Za-z0-9]+|Qgis)\.([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")
    offenders = []
    for path in QT_FACING:
        text = path.read_text(encoding="utf-8")
        # Importing QAction from QtWidgets is fine as the Qt5 fallback after trying QtGui first.
        has_qaction_fallback = re.search(r"try:\s*\n\s*from qgis\.PyQt\.QtGui import [^\n]*\bQAction\b", text)
        for number, line in _code_lines(path):
            where = f"{path.relative_to(ROOT)}:{number}"
            for pattern, why in PYQT5_ONLY_PATTERNS.items():
                if "QAction" in pattern and has_qaction_fallback:
                    continue
                if re.search(pattern, line):
                    offenders.append(f"{where}: {why}: {line.strip()}")
            for match in attribute_use.finditer(line):
                owner, attribute = match.groups()
                cls = namespaces.get(owner)
                value = getattr(cls, attribute, None) if cls is not None else None
                # An enum member reached without its enum class: Qt.AlignCenter instead of Qt.AlignmentFlag.AlignCenter.
                if isinstance(value, int) and not isinstance(value, (bool, type)) and type(value) is not int:
                    scoped = f"{owner}.{type(value).__name__}.{attribute}"
                    offenders.append(f"{where}: unscoped enum {owner}.{attribute}; write {scoped}")
    assert not offenders, "PyQt5-only code (breaks on QGIS 4 / Qt6):\n" + "\n".join(offenders)


def test_compat_check_catches_pyqt5_only_code(tmp_path, qgis_app):
    """The checker itself must be able to fail."""
    namespaces = _qt_namespaces()
    value = namespaces["Qt"].AlignCenter
    assert isinstance(value, int) and type(value) is not int
    assert re.search(list(PYQT5_ONLY_PATTERNS)[0], "dialog.exec_()")
    assert not isinstance(namespaces["Qt"].AlignmentFlag, int)


def test_metadata_is_complete_for_the_plugin_repository():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    general = parser["general"]
    required = [
        "name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
        "repository", "tracker", "tags", "category", "hasProcessingProvider", "icon", "experimental",
    ]
    missing = [key for key in required if not general.get(key, "").strip()]
    assert not missing, f"metadata.txt lacks {missing}"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["qgisMaximumVersion"] == "4.99"
    assert general["category"] == "Raster"
    assert general["hasProcessingProvider"] == "yes"
    assert (ROOT / general["icon"]).is_file(), "icon named in metadata.txt is missing"
    text = (ROOT / "metadata.txt").read_text(encoding="utf-8").lower()
    for template_text in ("todo", "fixme", "example.com", "your name", "plugin builder", "<", "lorem"):
        assert template_text not in text, f"template text left in metadata.txt: {template_text}"
    from footprint_plugin import __version__

    assert general["version"] == __version__


@pytest.mark.parametrize("path", sorted((ROOT / "footprint_plugin").rglob("*.py")), ids=lambda p: p.name)
def test_modules_use_postponed_annotations(path):
    text = path.read_text(encoding="utf-8")
    if text.strip() and "def " in text:
        assert "from __future__ import annotations" in text, f"{path.relative_to(ROOT)} lacks the future import"
