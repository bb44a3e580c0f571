"""Rasters that are not files (XYZ, WMS, WMTS, WCS, any provider QGIS reads): fetch the chosen area at the
model's pixel size into a temporary GeoTIFF, block by block with progress and cancel, then detect on that.

The engine reads files; QGIS reads everything else. So the fetch stays on the QGIS side: a fresh layer
on the same source (the project's layer belongs to the GUI thread), its provider and renderer in a
QgsRasterPipe, and QgsRasterFileWriter, which writes tile by tile and polls the feedback.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsDistanceArea,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterBlockFeedback,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
)

# The limit on one fetch: 64 megapixels (8000 x 8000 at the model's pixel size, about 4 x 4 km at 0.5 m).
# It bounds the download, the temporary file (~200 MB) and the time a web service is asked to serve.
MAX_FETCH_PIXELS = 64_000_000
# Share of the progress bar the fetch takes; detection takes the rest.
FETCH_SHARE = 0.3
# Data types a provider renders as colour (web maps): written through the layer's renderer as RGBA.
_COLOUR_TYPES = {Qgis.DataType.ARGB32, Qgis.DataType.ARGB32_Premultiplied}


def is_web_layer(layer: Optional[QgsRasterLayer]) -> bool:
    """True for a raster layer that is not a plain file GDAL opens (XYZ/WMS/WMTS/WCS, databases…)."""
    if layer is None or not layer.isValid():
        return False
    if layer.providerType() != "gdal":
        return True
    return not Path(layer.source().split("|")[0]).exists()


def display_path(layer: QgsRasterLayer) -> Path:
    """What the `source` field of the buildings says for a fetched layer: its name."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in layer.name()) or "web_map"
    return Path(safe)


def ground_metres_per_unit(
    crs: QgsCoordinateReferenceSystem, point: QgsPointXY, context: QgsProcessingContext
) -> float:
    """Ground metres per CRS unit along x at `point` (Web Mercator 'metres' shrink away from the equator)."""
    area = QgsDistanceArea()
    area.setSourceCrs(crs, context.transformContext())
    area.setEllipsoid("WGS84")
    step = 1.0 if not crs.isGeographic() else 1e-5
    metres = area.measureLine(point, QgsPointXY(point.x() + step, point.y()))
    if not (metres > 0 and math.isfinite(metres)):
        raise QgsProcessingException(
            f"Cannot measure distances in the layer's CRS ({crs.authid()}). Reproject it first."
        )
    return metres / step


def fetch_area(
    layer: QgsRasterLayer,
    extent: Optional[QgsRectangle],
    mask_geometry: Optional[QgsGeometry],
    gsd_m: float,
    scratch: Path,
    feedback: QgsProcessingFeedback,
    context: QgsProcessingContext,
    max_pixels: int = MAX_FETCH_PIXELS,
) -> Path:
    """Write the part of `layer` inside extent and mask bounds (layer CRS) as a GeoTIFF at `gsd_m` ground metres."""
    area = QgsRectangle(layer.extent())
    for limit in (extent, mask_geometry.boundingBox() if mask_geometry is not None else None):
        if limit is not None and not limit.isNull():
            area = area.intersect(limit)
    if area.isEmpty():
        raise QgsProcessingException(
            f"The chosen area does not overlap '{layer.name()}'. Zoom the map onto the layer or pick another mask."
        )
    crs = layer.crs()
    per_unit = ground_metres_per_unit(crs, area.center(), context)
    pixel = gsd_m / per_unit
    width, height = math.ceil(area.width() / pixel), math.ceil(area.height() / pixel)
    if width * height > max_pixels:
        side = int(math.sqrt(max_pixels))
        raise QgsProcessingException(
            f"The area to fetch from '{layer.name()}' is {width} x {height} pixels at the model's {gsd_m:g} m, more than "
            f"the limit of {max_pixels / 1e6:.0f} megapixels (about {side} x {side}, {side * gsd_m / 1000:.1f} km "
            "square). Zoom in and use 'Current map extent', or limit the area with polygons."
        )
    # The area grows to whole pixels, so the written grid is exactly `pixel` wide.
    area = QgsRectangle(
        area.xMinimum(), area.yMaximum() - height * pixel, area.xMinimum() + width * pixel, area.yMaximum()
    )
    feedback.pushInfo(
        f"Fetching {width} x {height} pixels ({gsd_m:g} m) of '{layer.name()}' from its {layer.providerType()} source…"
    )
    # A layer of our own on the same source: the project's layer and its provider belong to the GUI thread.
    own = QgsRasterLayer(layer.source(), layer.name(), layer.providerType())
    if not own.isValid():
        raise QgsProcessingException(
            f"Could not open '{layer.name()}' ({layer.providerType()}) again to fetch it: check its source."
        )
    provider = own.dataProvider()
    pipe = QgsRasterPipe()
    if not pipe.set(provider.clone()):
        raise QgsProcessingException(
            f"The {layer.providerType()} provider of '{layer.name()}' cannot be read block by block."
        )
    if provider.dataType(1) in _COLOUR_TYPES:
        # Web maps serve colour images: written through the renderer as RGBA bytes (alpha = no data).
        pipe.set(own.renderer().clone())
    out = scratch / f"{display_path(layer).stem}_fetched.tif"
    writer = QgsRasterFileWriter(str(out))
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(["COMPRESS=DEFLATE", "TILED=YES", "BIGTIFF=IF_SAFER"])
    block_feedback = QgsRasterBlockFeedback()
    block_feedback.progressChanged.connect(lambda p: feedback.setProgress(FETCH_SHARE * p))
    feedback.canceled.connect(block_feedback.cancel)
    error = writer.writeRaster(pipe, width, height, area, crs, context.transformContext(), block_feedback)
    if feedback.isCanceled() or block_feedback.isCanceled():
        from ..core.common.errors import CanceledError

        raise CanceledError()
    if error != QgsRasterFileWriter.WriterError.NoError or not out.is_file():
        raise QgsProcessingException(
            f"Fetching '{layer.name()}' failed (QgsRasterFileWriter error {int(error)}). Check the service is reachable."
        )
    _mark_alpha(out)
    feedback.setProgress(100.0 * FETCH_SHARE)
    return out


def _mark_alpha(path: Path) -> None:
    """A 4-band RGBA fetch: tag band 4 as alpha, so the engine reads it as the no-data mask."""
    from osgeo import gdal

    dataset = gdal.Open(str(path), gdal.GA_Update)
    if dataset is None:
        return
    if dataset.RasterCount == 4:
        for index, interp in enumerate(
            (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand, gdal.GCI_AlphaBand), 1
        ):
            dataset.GetRasterBand(index).SetColorInterpretation(interp)
    dataset = None
