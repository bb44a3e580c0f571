"""The plugin loads in real QGIS (pytest-qgis), adds its toolbar button and menu entries, and removes them again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QMenu

from tests.qgis_helpers import ALGORITHMS as HELPER_ALGORITHMS
from tests.qgis_helpers import REPO_ROOT, import_plugin_package, install_plugins_menu

MENU_ENTRIES = {"Detect buildings", "Train / fine-tune model…", "Model manager…", "Install dependencies…"}
ALGORITHMS = set(HELPER_ALGORITHMS)


@pytest.fixture
def plugin_menu_iface(qgis_iface):
    menu = install_plugins_menu(qgis_iface)
    yield qgis_iface
    qgis_iface.mainWindow().menuBar().removeAction(menu.menuAction())


def _menu_texts(menu: QMenu) -> set[str]:
    texts = set()
    for action in menu.actions():
        texts.add(action.text())
        if action.menu() is not None:
            texts |= _menu_texts(action.menu())
    return texts


def _toolbar_texts(iface) -> set[str]:
    return {a.text() for tb in iface._toolbars.values() if not _deleted(tb) for a in tb.actions()}


def _deleted(obj) -> bool:
    try:
        from qgis.PyQt import sip
    except ImportError:
        import sip
    return sip.isdeleted(obj)


def test_class_factory_init_gui_and_unload(plugin_menu_iface, qgis_processing):
    plugin = import_plugin_package().classFactory(plugin_menu_iface)
    plugin.initGui()
    toolbar = plugin.toolbar
    try:
        assert MENU_ENTRIES <= _menu_texts(plugin_menu_iface.plugins_menu)
        assert "Detect buildings" in _menu_texts(plugin_menu_iface.raster_menu)  # Raster > Building Footprints
        assert "Detect buildings" in _toolbar_texts(plugin_menu_iface)
        provider = QgsApplication.processingRegistry().providerById("footprint")
        assert provider is not None
        assert {a.id() for a in provider.algorithms()} == ALGORITHMS
        for algorithm in provider.algorithms():
            assert algorithm.shortHelpString(), f"{algorithm.id()} has no help"
    finally:
        plugin.unload()
    assert not MENU_ENTRIES & _menu_texts(plugin_menu_iface.plugins_menu)
    assert "Detect buildings" not in _menu_texts(plugin_menu_iface.raster_menu)
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert _deleted(toolbar), "unload() must remove the plugin's toolbar"
    assert "Detect buildings" not in _toolbar_texts(plugin_menu_iface)
    assert QgsApplication.processingRegistry().providerById("footprint") is None


def test_detect_without_raster_says_so(plugin_menu_iface, qgis_processing, qgis_new_project):
    from qgis.core import Qgis

    plugin = import_plugin_package().classFactory(plugin_menu_iface)
    plugin.initGui()
    try:
        plugin.detect_action.trigger()
        messages = plugin_menu_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)
        assert any("raster layer" in m for m in messages), messages
    finally:
        plugin.unload()


def test_missing_torch_keeps_algorithms_and_explains(tmp_path):
    """In a fresh interpreter where torch cannot be imported, the provider still registers every algorithm."""
    script = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class HideTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch' (hidden by test)")
                return None
        sys.meta_path.insert(0, HideTorch())
        sys.path.insert(0, {str(REPO_ROOT.parent)!r})
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from tests.qgis_helpers import import_plugin_package
        from qgis.core import QgsApplication
        app = QgsApplication([], False)
        app.initQgis()
        plugin = import_plugin_package().classFactory(None)
        plugin.initProcessing()
        registry = QgsApplication.processingRegistry()
        algorithms = sorted(a.id() for a in registry.providerById("footprint").algorithms())
        print("ALGS", ",".join(algorithms))
        ok, message = registry.algorithmById("footprint:detectbuildings").canExecute()
        print("CAN", ok)
        print("MSG", message)
        assert "torch" not in sys.modules
        """
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", FOOTPRINT_DEPS_DIR=str(tmp_path / "deps"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line[:3] in ("ALG", "CAN", "MSG"))
    assert set(lines["ALGS"].split(",")) == ALGORITHMS
    assert lines["CAN"] == "False"
    assert "torch" in lines["MSG"] and "Install dependencies" in lines["MSG"]
