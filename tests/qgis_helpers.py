"""Helpers for the QGIS-layer tests: import the repo as the `building_footprints` plugin package,
a Plugins menu for pytest-qgis's iface, waiting for tasks, and a tiny random-weight model."""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "building_footprints"
ALGORITHMS = (
    "footprint:detectbuildings",
    "footprint:batchdetect",
    "footprint:trainmodel",
    "footprint:finetunemodel",
    "footprint:evaluatefootprints",
    "footprint:regularizefootprints",
    "footprint:suggestcells",
)
_LINK_DIR = Path(tempfile.mkdtemp(prefix="footprint_plugin_link_"))


def import_plugin_package():
    """The repository imported under the name QGIS gives the installed plugin (a symlink, no copy)."""
    if PLUGIN_NAME in sys.modules:
        return sys.modules[PLUGIN_NAME]
    link = _LINK_DIR / PLUGIN_NAME
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    if str(_LINK_DIR) not in sys.path:
        sys.path.insert(0, str(_LINK_DIR))
    return importlib.import_module(PLUGIN_NAME)


def install_plugins_menu(iface):
    """pytest-qgis's iface has no removePluginMenu; give it a real Plugins menu like QGIS's."""
    from qgis.PyQt.QtWidgets import QMenu

    menu_bar = iface.mainWindow().menuBar()
    plugins_menu = QMenu("&Plugins", menu_bar)
    menu_bar.addMenu(plugins_menu)
    submenus: dict = {}

    def add_plugin_to_menu(name, action):
        if name not in submenus:
            submenus[name] = plugins_menu.addMenu(name)
        submenus[name].addAction(action)

    def remove_plugin_menu(name, action):
        submenu = submenus.get(name)
        if submenu is not None:
            submenu.removeAction(action)
            if not submenu.actions():
                plugins_menu.removeAction(submenu.menuAction())
                del submenus[name]

    iface.addPluginToMenu = add_plugin_to_menu
    iface.removePluginMenu = remove_plugin_menu
    iface.plugins_menu = plugins_menu
    # The Raster menu, like QGIS's (the plugin puts Detect buildings there too).
    raster_menu = QMenu("&Raster", menu_bar)
    menu_bar.addMenu(raster_menu)
    raster_submenus: dict = {}

    def add_plugin_to_raster_menu(name, action):
        if name not in raster_submenus:
            raster_submenus[name] = raster_menu.addMenu(name)
        raster_submenus[name].addAction(action)

    def remove_plugin_raster_menu(name, action):
        submenu = raster_submenus.get(name)
        if submenu is not None:
            submenu.removeAction(action)
            if not submenu.actions():
                raster_menu.removeAction(submenu.menuAction())
                del raster_submenus[name]

    iface.addPluginToRasterMenu = add_plugin_to_raster_menu
    iface.removePluginRasterMenu = remove_plugin_raster_menu
    iface.raster_menu = raster_menu
    return plugins_menu


@contextmanager
def registered_provider():
    """Our Processing provider registered in the running QGIS while the block runs (processing.run finds footprint:*)."""
    from qgis.core import QgsApplication

    from footprint_plugin.processing.provider import FootprintProvider

    registry = QgsApplication.processingRegistry()
    provider = FootprintProvider()
    assert registry.addProvider(provider)
    try:
        yield provider
    finally:
        registry.removeProvider(provider)


def wait_until(condition, limit_s: float = 300.0, step_s: float = 0.05) -> bool:
    """Spin the Qt event loop until condition() is true (the limit only guards against hangs)."""
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        if condition():
            return True
        time.sleep(step_s)
    return False


def make_tiny_model(
    folder: Path | None = None,
    name: str = "tiny_test_model",
    in_channels: int = 3,
    zero_head: bool = False,
    **card_fields,
):
    """A random-weight mobile U-Net saved with a card, for exercising the plumbing (not the accuracy).

    zero_head: zero the last convolution, so the model outputs probability 0.5 everywhere.
    """
    import torch

    from footprint_plugin.core.models import create_model
    from footprint_plugin.core.zoo import weights as zoo
    from footprint_plugin.core.zoo.modelcard import ModelCard, user_model_dir

    torch.manual_seed(0)
    architecture = card_fields.pop("architecture", "unet_mobilenetv2")
    model = create_model(architecture, in_channels, 1)
    if zero_head:
        last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    defaults = dict(
        name=name,
        architecture=architecture,
        in_channels=in_channels,
        out_channels=1,
        band_roles=["red", "green", "blue"][:in_channels]
        if in_channels <= 3
        else [f"b{i}" for i in range(in_channels)],
        sensor="EO",
        scaling={"method": "percentile", "low": 2, "high": 98},
        gsd_m=0.5,
        tile_size=256,
        overlap=32,
        threshold=0.5,
        tta="d4",
        allow_panchromatic=True,
        description="Random weights, for tests only.",
    )
    defaults.update(card_fields)
    card = ModelCard(**defaults)
    return zoo.save_model(model, card, folder or user_model_dir())
