"""QGIS entry point. The repository root is the plugin folder (installed as `building_footprints`)."""

from __future__ import annotations


def classFactory(iface):  # noqa: N802 - name fixed by QGIS
    """Called by QGIS to create the plugin instance."""
    from .footprint_plugin.plugin import FootprintPlugin

    return FootprintPlugin(iface)
