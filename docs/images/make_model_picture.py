"""Picture of the bundled model's polygons over a real raster, with the reference labels.

    .venv/bin/python docs/images/make_model_picture.py RASTER PREDICTED.gpkg LABELS.geojson OUT.png "TITLE"
"""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import rasterio

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from footprint_plugin.core.vector_io import read_polygons  # noqa: E402


def main(raster: str, predicted: str, labels: str, out: str, title: str) -> None:
    with rasterio.open(raster) as ds:
        bands = ds.read(list(range(1, min(ds.count, 3) + 1)), masked=True).astype(float)
        crs, t = ds.crs.to_wkt(), ds.transform
    lo, hi = np.percentile(bands.compressed(), [2, 98])
    image = np.clip((bands.filled(0) - lo) / (hi - lo), 0, 1)
    image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    extent = [t.c, t.c + t.a * bands.shape[2], t.f + t.e * bands.shape[1], t.f]
    fig, ax = plt.subplots(figsize=(14, 8))
    ax.imshow(image, cmap="gray", extent=extent)
    for geometries, style in ((read_polygons(labels, crs).geometries, dict(color="yellow", lw=1.2, ls="--")),
                              (read_polygons(predicted, crs).geometries, dict(color="cyan", lw=1.4))):
        for geometry in geometries:
            for polygon in getattr(geometry, "geoms", [geometry]):
                ax.plot(*polygon.exterior.xy, **style)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_title(title + "\ncyan: detected by footprint_eo_mobilenet; yellow dashed: OSM reference labels")
    ax.set_xticks([])
    ax.set_yticks([])
    plt.tight_layout()
    plt.savefig(out, dpi=90)


if __name__ == "__main__":
    main(*sys.argv[1:6])
