"""Rasters that are not files (XYZ, WMS, WMTS, WCS, any provider QGIS reads): fetch the chosen area at the
model's pixel size into a temporary GeoTIFF, block by block with progress and cancel, then detect on that.

The engine reads files; QGIS reads everything else. So the fetch stays on the QGIS side: a fresh layer
on the same source (the project's layer belongs to the GUI thread), its provider and renderer in a
QgsRasterPipe, and QgsRasterFileWriter, which writes tile by tile and polls the feedback.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
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
# A failing service: each request waits at most this long, the fetch is tried this often, and never longer in all.
FETCH_REQUEST_TIMEOUT_S = 20.0
FETCH_ATTEMPTS = 3
FETCH_RETRY_PAUSE_S = 2.0
FETCH_TOTAL_S = 180.0
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
    deadline = time.monotonic() + FETCH_TOTAL_S
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        problem = _fetch_once(pipe, out, (width, height, area, crs), feedback, context, deadline, own)
        if problem is None:
            break
        out.unlink(missing_ok=True)
        if attempt == FETCH_ATTEMPTS or time.monotonic() + FETCH_RETRY_PAUSE_S >= deadline:
            raise QgsProcessingException(
                f"The web map '{layer.name()}' ({service_name(layer)}) failed: {problem}, "
                f"after {attempt} attempt(s). Check that the service is up and its URL is right, or try again later."
            )
        feedback.pushWarning(f"The web map '{layer.name()}' failed ({problem}); trying again…")
        time.sleep(FETCH_RETRY_PAUSE_S)
    _mark_alpha(out)
    feedback.setProgress(100.0 * FETCH_SHARE)
    return out


def service_name(layer: QgsRasterLayer) -> str:
    """The provider and host of a web layer, for messages ('wms at tiles.example.org'); never a password."""
    from urllib.parse import unquote, urlsplit

    from ..core.io.paths import scrub_credentials

    found = re.search(r"url=([^&]+)", layer.source())
    host = urlsplit(unquote(found.group(1))).netloc.rpartition("@")[2] if found else ""
    return scrub_credentials(f"{layer.providerType()} at {host}" if host else layer.providerType())


def _fetch_once(pipe, out, grid, feedback, context, deadline: float, layer: QgsRasterLayer) -> Optional[str]:
    """Write the area (grid: width, height, extent, CRS) once; what went wrong (the service's HTTP status, no
    answer in time, no image data), or None."""
    width, height, area, crs = grid
    writer = QgsRasterFileWriter(str(out))
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(["COMPRESS=DEFLATE", "TILED=YES", "BIGTIFF=IF_SAFER"])
    block_feedback = QgsRasterBlockFeedback()
    timed_out = []

    def on_progress(percent: float) -> None:
        feedback.setProgress(FETCH_SHARE * percent)
        if time.monotonic() > deadline and not timed_out:  # a service that stalls: stop after the time bound
            timed_out.append(True)
            block_feedback.cancel()

    block_feedback.progressChanged.connect(on_progress)
    feedback.canceled.connect(block_feedback.cancel)
    with _request_timeout(FETCH_REQUEST_TIMEOUT_S):
        error = writer.writeRaster(pipe, width, height, area, crs, context.transformContext(), block_feedback)
    if timed_out:
        return f"no complete answer within {FETCH_TOTAL_S:.0f} s"
    if feedback.isCanceled() or block_feedback.isCanceled():
        from ..core.common.errors import CanceledError

        raise CanceledError()
    errors = list(block_feedback.errors()) if hasattr(block_feedback, "errors") else []
    if errors:
        return _http_problem(errors)
    if error != QgsRasterFileWriter.WriterError.NoError or not out.is_file():
        return f"QgsRasterFileWriter error {int(error)}"
    if not _has_pixels(out):
        # QGIS's provider returns empty blocks for failed tiles and says nothing: ask the service once ourselves.
        return probe_service(layer, area)
    return None


_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"II*\x00", b"MM\x00*")


def probe_service(layer: QgsRasterLayer, area: QgsRectangle) -> str:
    """Why a web layer sent no pixels, from one request of our own: its HTTP status, no answer, or not an image."""
    import urllib.error
    import urllib.request

    url = _probe_url(layer, area)
    if url is None:
        return "it sent no image data (every pixel empty)"
    try:
        with urllib.request.urlopen(url, timeout=FETCH_REQUEST_TIMEOUT_S) as reply:  # noqa: S310 - the user's own URL
            status, head = reply.status, reply.read(16)
    except urllib.error.HTTPError as exc:
        return f"HTTP status {exc.code} ({exc.reason})"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"no answer ({reason})"
    if not head.startswith(_IMAGE_MAGIC):
        return f"HTTP status {status}, but the answer is not an image (garbage bytes or an error page)"
    return f"HTTP status {status}, but no pixels came back for this area"


def _probe_url(layer: QgsRasterLayer, area: QgsRectangle) -> Optional[str]:
    """One XYZ tile of the area's centre, or a WMS/WMTS service's GetCapabilities; None for other providers."""
    from urllib.parse import unquote

    found = re.search(r"url=([^&]+)", layer.source())
    if found is None:
        return None
    url = unquote(found.group(1))
    if "{x}" not in url:
        return url + ("&" if "?" in url else "?") + "SERVICE=WMS&REQUEST=GetCapabilities"
    zoom = int(re.search(r"zmax=(\d+)", layer.source()).group(1)) if "zmax=" in layer.source() else 18
    centre = area.center()
    half = 20037508.342789244
    n = 2**zoom
    x = int((centre.x() + half) / (2 * half) * n)
    y = int((half - centre.y()) / (2 * half) * n)
    return url.replace("{z}", str(zoom)).replace("{x}", str(x)).replace("{y}", str(y)).replace("{-y}", str(n - 1 - y))


def _http_problem(errors: list[str]) -> str:
    """The first HTTP status the provider reported ('HTTP status 500'), else its first error, credentials scrubbed."""
    from ..core.io.paths import scrub_credentials

    for text in errors:
        status = re.search(r"(?:Status code|HTTP(?: status)?)\D{0,3}(\d{3})", text, re.IGNORECASE)
        if status:
            return f"HTTP status {status.group(1)} ({len(errors)} failed request(s))"
    return scrub_credentials(errors[0].strip().splitlines()[0] if errors[0].strip() else "request failed")


@contextlib.contextmanager
def _request_timeout(seconds: float):
    """QGIS's network timeout, bounded for the fetch (the default minute per tile would stall a run for hours)."""
    from qgis.core import QgsNetworkAccessManager

    previous = QgsNetworkAccessManager.timeout()
    QgsNetworkAccessManager.setTimeout(int(min(previous, seconds * 1000)) if previous > 0 else int(seconds * 1000))
    try:
        yield
    finally:
        QgsNetworkAccessManager.setTimeout(previous)


def _has_pixels(path: Path) -> bool:
    """False when the fetched GeoTIFF holds no data: all transparent (RGBA) or all zero."""
    from osgeo import gdal

    dataset = gdal.OpenEx(str(path), gdal.OF_RASTER, open_options=[])
    if dataset is None:
        return False
    band = dataset.GetRasterBand(dataset.RasterCount if dataset.RasterCount == 4 else 1)
    # ComputeRasterMinMax does not save statistics (no .aux.xml); approximate is enough to see "all empty".
    low, high = band.ComputeRasterMinMax(True)
    return bool(high > 0)


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
