"""Architecture rules: imports point one way, the engine stays free of QGIS/Qt, GUI code stays Qt6/QGIS 4 compatible.

Layers (docs/ARCHITECTURE.md): gui -> processing -> core, and cli -> core. Enforced here:
core never imports qgis/Qt, processing never imports the GUI, the CLI never imports qgis/Qt (it runs
in any Python with the engine's packages), and the core has no import cycles.
"""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "footprint_plugin"
CORE = PACKAGE / "core"
CLI = PACKAGE / "cli"
PROCESSING = PACKAGE / "processing"
FORBIDDEN_IN_CORE = ("qgis", "PyQt5", "PyQt6", "PyQt4", "sip", "processing")
# The CLI runs without QGIS: besides qgis/Qt it must not reach our QGIS-facing packages either.
FORBIDDEN_IN_CLI_PACKAGES = ("processing", "gui", "plugin")
# Processing runs headless (qgis_process, batch, models): no dialogs, no QGIS GUI library, no plugin class.
FORBIDDEN_IN_PROCESSING_PACKAGES = ("gui", "plugin")
FORBIDDEN_IN_PROCESSING_MODULES = ("qgis.gui", "qgis.utils", "qgis.PyQt.QtWidgets")
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


def _package_target(path: Path, name: str, level: int, package_root: Path | None = None) -> str | None:
    """For an import inside footprint_plugin, the dotted name below footprint_plugin it reaches, else None."""
    if level == 0:
        return name[len("footprint_plugin.") :] if name.startswith("footprint_plugin.") else None
    package = list(path.relative_to(package_root or PACKAGE).parent.parts)
    if level - 1 > len(package):
        return None
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _forbidden_imports(
    folder: Path, top_level: tuple[str, ...], packages: tuple[str, ...], modules: tuple[str, ...] = ()
) -> list[str]:
    """'file:line imports x' for every import of a forbidden top-level module, own package or module."""
    offenders = []
    for path in sorted(folder.rglob("*.py")):
        for line, name, level in _imported_modules(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if level == 0 and name.split(".")[0] in top_level:
                offenders.append(f"{where} imports {name}")
            if level == 0 and any(name == m or name.startswith(m + ".") for m in modules):
                offenders.append(f"{where} imports {name}")
            target = _package_target(path, name, level)
            if target is not None and target.split(".")[0] in packages:
                offenders.append(f"{where} imports footprint_plugin.{target}")
    return offenders


def test_processing_never_imports_the_gui():
    offenders = _forbidden_imports(PROCESSING, (), FORBIDDEN_IN_PROCESSING_PACKAGES, FORBIDDEN_IN_PROCESSING_MODULES)
    assert not offenders, "processing must run headless (no gui/, qgis.gui, widgets):\n" + "\n".join(offenders)


def test_cli_never_imports_qgis_or_qt():
    offenders = _forbidden_imports(CLI, FORBIDDEN_IN_CORE, FORBIDDEN_IN_CLI_PACKAGES)
    assert not offenders, "the CLI must run without QGIS:\n" + "\n".join(offenders)


def test_import_rule_checker_can_fail(tmp_path, monkeypatch):
    """The checkers above must see relative, absolute and function-level imports."""
    fake = tmp_path / "footprint_plugin"
    (fake / "processing").mkdir(parents=True)
    (fake / "processing" / "bad.py").write_text(
        "def f():\n    from ..gui import detect_dialog\n    from qgis.gui import QgsMapCanvas\n"
        "import footprint_plugin.plugin\n",
        encoding="utf-8",
    )
    (fake / "cli").mkdir()
    (fake / "cli" / "bad.py").write_text("from qgis.core import Qgis\nfrom ..processing import base\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    processing = _forbidden_imports(
        fake / "processing", (), FORBIDDEN_IN_PROCESSING_PACKAGES, FORBIDDEN_IN_PROCESSING_MODULES
    )
    assert sorted(o.split(" imports ")[1] for o in processing) == [
        "footprint_plugin.gui",
        "footprint_plugin.plugin",
        "qgis.gui",
    ]
    cli = _forbidden_imports(fake / "cli", FORBIDDEN_IN_CORE, FORBIDDEN_IN_CLI_PACKAGES)
    assert sorted(o.split(" imports ")[1] for o in cli) == ["footprint_plugin.processing", "qgis.core"]


def test_cli_loads_no_qgis_at_runtime():
    """Import every CLI module (and run its help) in a fresh interpreter that refuses qgis/PyQt imports."""
    names = ["footprint_plugin.cli." + p.stem for p in sorted(CLI.glob("*.py")) if p.name != "__init__.py"]
    script = f"""
import contextlib, importlib, importlib.abc, io, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {FORBIDDEN_IN_CORE!r}:
            raise ImportError('the CLI imported forbidden module ' + name)
sys.meta_path.insert(0, Refuse())
import footprint_plugin.cli as cli
for name in {names!r}:
    importlib.import_module(name)
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    cli.main(["--help"])
bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_IN_CORE!r}]
assert not bad, bad
print('ok', len({names!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


# The core's subpackages and what each may import (its __init__ docstring says the same). Lower layers never
# reach up: common <- io <- {models, vectors} <- zoo <- engine <- {learning, batch}.
CORE_PACKAGES: dict[str, set[str]] = {
    "common": set(),
    "io": {"common"},
    "models": {"common"},
    "zoo": {"common", "io", "models"},
    "vectors": {"common", "io"},
    "engine": {"common", "io", "models", "zoo", "vectors"},
    "learning": {"common", "io", "models", "zoo", "vectors", "engine"},
    "batch": {"common", "io", "models", "zoo", "vectors", "engine"},
}
# Size limits in core: split by responsibility before a room grows past these.
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60


def _core_import_graph(core: Path = CORE) -> dict[str, set[str]]:
    """core module -> core modules it imports, at module level or inside functions (a lazy import is still a cycle)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(core.rglob("*.py")):
        module = ".".join(("core", *path.relative_to(core).with_suffix("").parts)).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _package_target(path, node.module or "", node.level, core.parent)
            if target is None or not target.startswith("core"):
                continue
            # "from . import x" / "from .models import x": x may be a submodule, resolved against the graph later.
            targets.update(f"{target}.{alias.name}" for alias in node.names)
        graph[module] = {t for t in targets if t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among the graph's own modules (a package reached through its submodule counts as the package)."""
    known = set(graph)

    def resolve(name: str) -> str | None:
        """The longest known module prefix: core.vectors.polygons.PolygonOptions -> core.vectors.polygons."""
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges = {
        m: {r for t in ts if (r := resolve(t)) and r != m and not r.startswith(m + ".")} for m, ts in graph.items()
    }
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return found


def _direction_offences(graph: dict[str, set[str]]) -> list[str]:
    """Imports between core subpackages that the CORE_PACKAGES table does not allow (lazy ones included)."""
    offences = []
    for module, targets in graph.items():
        parts = module.split(".")
        if len(parts) < 2:
            continue
        if parts[1] not in CORE_PACKAGES:
            offences.append(f"{module} lies outside the core's subpackages {sorted(CORE_PACKAGES)}")
            continue
        for target in sorted(targets):
            other = target.split(".")[1] if target.count(".") >= 1 else ""
            if other and other != parts[1] and other not in CORE_PACKAGES[parts[1]]:
                offences.append(
                    f"{module} imports {target}: core.{parts[1]} may import only {sorted(CORE_PACKAGES[parts[1]])}"
                )
    return offences


def test_core_is_split_into_the_documented_subpackages():
    """Every core module lives in one of the subpackages, and each package's docstring says what it owns."""
    loose = [p.name for p in CORE.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules directly in core/ (put them in a subpackage): {loose}"
    packages = {p.name for p in CORE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(CORE_PACKAGES), packages ^ set(CORE_PACKAGES)
    for name in packages:
        doc = ast.get_docstring(ast.parse((CORE / name / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert "May import" in doc, f"core/{name}/__init__.py must say what it owns and what it may import"


def test_core_subpackages_import_only_downwards():
    offences = _direction_offences(_core_import_graph())
    assert not offences, "core import directions broken:\n" + "\n".join(offences)


def test_core_has_no_import_cycles():
    """Shared helpers live in core/common, so no module needs a sibling's private parts."""
    graph = _core_import_graph()
    assert {"core.common.geometry", "core.vectors.polygons", "core.vectors.regularize"} <= set(graph)
    assert "core.common.geometry.largest_polygon" in graph["core.vectors.regularize"]
    cycles = _cycles(graph)
    assert not cycles, "import cycles in core:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_direction_and_cycle_checks_can_fail(tmp_path):
    """A lazy import upwards and a lazy circle in a scratch core are both caught."""
    core = tmp_path / "core"
    for package in ("common", "engine"):
        (core / package).mkdir(parents=True)
        (core / package / "__init__.py").write_text("")
    (core / "__init__.py").write_text("")
    (core / "common" / "errors.py").write_text("def f():\n    from ..engine import pipeline\n")
    (core / "engine" / "pipeline.py").write_text("from ..common.errors import f\n")
    graph = _core_import_graph(core)
    assert any("core.common.errors imports core.engine" in o for o in _direction_offences(graph))
    assert _cycles(graph) == [["core.common.errors", "core.engine.pipeline", "core.common.errors"]]
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def _size_offences(root: Path = CORE) -> list[str]:
    offences = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(root.parent))
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            offences.append(f"{where}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            span = (getattr(node, "end_lineno", None) or 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and span > MAX_CLASS_LINES:
                offences.append(f"{where}:{node.lineno} class {node.name}: {span} lines (at most {MAX_CLASS_LINES})")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and span > MAX_FUNCTION_LINES:
                offences.append(f"{where}:{node.lineno} def {node.name}: {span} lines (at most {MAX_FUNCTION_LINES})")
    return offences


def test_core_rooms_stay_small():
    offences = _size_offences()
    assert not offences, "split these by responsibility:\n" + "\n".join(offences)


def test_size_check_can_fail(tmp_path):
    core = tmp_path / "core"
    core.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (core / "big.py").write_text(f"def long():\n{body}\n")
    assert any("def long" in o for o in _size_offences(core))


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
        "name",
        "qgisMinimumVersion",
        "description",
        "about",
        "version",
        "author",
        "email",
        "repository",
        "tracker",
        "tags",
        "category",
        "hasProcessingProvider",
        "icon",
        "experimental",
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
