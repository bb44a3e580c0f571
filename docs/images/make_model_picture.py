"""Picture of the bundled model's polygons over a real raster, with the reference labels.

.venv/bin/python docs/images/make_model_picture.py RASTER PREDICTED.gpkg LABELS.geojson OUT.png "TITLE"
"""

from __future__ import annotations

import sys

from footprint_plugin.core.learning.report import write_quicklook


def main(raster: str, predicted: str, labels: str, out: str, title: str) -> None:
    layers = [(labels, {"color": "yellow", "ls": "--"}), (predicted, {"color": "cyan", "lw": 1.4})]
    write_quicklook(raster, layers, out, f"{title}\ncyan: detected; yellow dashed: reference labels", width_inches=14)


if __name__ == "__main__":
    main(*sys.argv[1:6])
