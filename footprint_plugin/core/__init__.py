"""The engine: raster I/O, models, tiled inference, polygons, metrics, training, model zoo.

Never imports qgis or PyQt (tests/test_architecture.py enforces this).
"""

from __future__ import annotations
