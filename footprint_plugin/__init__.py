"""Building footprint detection for QGIS: engine (core), Processing provider and GUI."""

from __future__ import annotations

__version__ = "0.1.0"
