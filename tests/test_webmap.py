"""Web-map input: a real XYZ tile server on 127.0.0.1 serves the OpenAerialMap chips of ../shared/data (they are
slippy-map tiles already), QGIS loads it as an XYZ layer, and footprint:detectbuildings fetches the chosen area
through QGIS's raster provider into a temporary GeoTIFF, detects on it and cleans up."""

from __future__ import annotations

import os
import re
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException, QgsProject, QgsRasterLayer, QgsVectorLayer

KAMPALA_TILES = "eo/hotosm_kampala/tiles"
ZOOM = 19


def _png_tile(path: Path) -> bytes:
    """The chip as an RGBA PNG (its internal mask becomes alpha), as a tile server would send it."""
    from osgeo import gdal

    source = gdal.Open(str(path))
    rgba = gdal.GetDriverByName("MEM").Create("", source.RasterXSize, source.RasterYSize, 4, gdal.GDT_Byte)
    for band in (1, 2, 3):
        rgba.GetRasterBand(band).WriteArray(source.GetRasterBand(band).ReadAsArray())
    rgba.GetRasterBand(4).WriteArray(source.GetRasterBand(1).GetMaskBand().ReadAsArray())
    name = f"/vsimem/tile_{path.stem}.png"
    gdal.GetDriverByName("PNG").CreateCopy(name, rgba)
    handle = gdal.VSIFOpenL(name, "rb")
    gdal.VSIFSeekL(handle, 0, 2)
    size = gdal.VSIFTellL(handle)
    gdal.VSIFSeekL(handle, 0, 0)
    data = gdal.VSIFReadL(1, size, handle)
    gdal.VSIFCloseL(handle)
    gdal.Unlink(name)
    return bytes(data)


@pytest.fixture(scope="module")
def xyz_server(shared_data):
    tiles = {}
    for path in sorted((shared_data / KAMPALA_TILES).glob(f"OAM-*-{ZOOM}.tif")):
        x, y, z = map(int, re.match(r"OAM-(\d+)-(\d+)-(\d+)", path.stem).groups())
        tiles[(z, x, y)] = path
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            requests.append(self.path)
            match = re.fullmatch(r"/(\d+)/(\d+)/(\d+)\.png", self.path)
            key = tuple(map(int, match.groups())) if match else None
            if key not in tiles:
                self.send_response(404)
                self.end_headers()
                return
            body = _png_tile(tiles[key])
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"port": server.server_address[1], "tiles": tiles, "requests": requests}
    server.shutdown()
    server.server_close()


@pytest.fixture
def provider(qgis_processing):
    """Per test here: the dialog test's plugin fixture unloads the plugin, which removes every footprint provider."""
    from tests.qgis_helpers import registered_provider

    with registered_provider() as provider:
        yield provider


@pytest.fixture
def xyz_layer(xyz_server, qgis_new_project) -> QgsRasterLayer:
    url = f"http://127.0.0.1:{xyz_server['port']}/{{z}}/{{x}}/{{y}}.png"
    layer = QgsRasterLayer(f"type=xyz&url={url}&zmax={ZOOM}&zmin={ZOOM}", "Kampala XYZ", "wms")
    assert layer.isValid(), layer.error().summary()
    QgsProject.instance().addMapLayer(layer)
    return layer


def _served_extent(xyz_server):
    from qgis.core import QgsRectangle

    extent = QgsRectangle()
    extent.setMinimal()
    for path in xyz_server["tiles"].values():
        extent.combineExtentWith(QgsRasterLayer(str(path), "t").extent())
    return extent


def _fetched_files() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("footprint_detect_*/*_fetched.tif"))


def test_detect_on_xyz_layer_fetches_area_and_cleans_up(
    provider, xyz_server, xyz_layer, tiny_model_dir, monkeypatch, tmp_path
):
    import processing

    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(tiny_model_dir))
    before = _fetched_files()
    extent = _served_extent(xyz_server)
    results = processing.run(
        "footprint:detectbuildings",
        {
            "INPUT": xyz_layer.id(),
            "MODEL": "tiny_test_model",
            "DEVICE": "cpu",
            "THRESHOLD": 0.01,
            "MIN_AREA": 1.0,
            "EXTENT": f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},{extent.yMaximum()} [EPSG:3857]",
            "OUTPUT": str(tmp_path / "buildings.gpkg"),
            "PROBABILITY": str(tmp_path / "probability.tif"),
        },
    )
    assert any(r.startswith(f"/{ZOOM}/") for r in xyz_server["requests"]), xyz_server["requests"][:5]
    probability = QgsRasterLayer(results["PROBABILITY"], "p")
    assert probability.isValid() and probability.crs().authid() == "EPSG:3857"
    # Fetched at the model's 0.5 m ground pixel (Kampala is at the equator: Mercator metres ~ ground metres).
    assert probability.rasterUnitsPerPixelX() == pytest.approx(0.5, rel=0.01)
    assert probability.extent().intersects(extent)
    buildings = QgsVectorLayer(results["OUTPUT"], "b", "ogr")
    assert buildings.featureCount() == results["N_BUILDINGS"] > 0
    assert next(buildings.getFeatures())["source"] == "Kampala_XYZ"
    assert _fetched_files() <= before, "the temporary GeoTIFF was left behind"


def test_web_map_area_over_the_limit_says_how_to_fix(provider, xyz_layer, tiny_model_dir, monkeypatch, tmp_path):
    import processing

    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(tiny_model_dir))
    with pytest.raises(QgsProcessingException, match="megapixels.*Zoom in"):
        processing.run(
            "footprint:detectbuildings",
            {"INPUT": xyz_layer.id(), "MODEL": "tiny_test_model", "OUTPUT": str(tmp_path / "b.gpkg")},
        )
    assert not (tmp_path / "b.gpkg").exists()


def test_fetch_matches_the_served_pixels(xyz_server, xyz_layer, qgis_processing):
    """The fetched GeoTIFF holds the chips' pixels (RGB + alpha mask), on the requested grid."""
    import numpy as np
    from osgeo import gdal
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    from footprint_plugin.processing.webmap import fetch_area

    path = sorted(xyz_server["tiles"].values())[0]
    tile = QgsRasterLayer(str(path), "t")
    with tempfile.TemporaryDirectory() as scratch:
        context = QgsProcessingContext()
        out = fetch_area(xyz_layer, tile.extent(), None, 0.2985, Path(scratch), QgsProcessingFeedback(), context)
        fetched = gdal.Open(str(out))
        assert fetched.RasterCount == 4
        assert fetched.GetRasterBand(4).GetColorInterpretation() == gdal.GCI_AlphaBand
        source = gdal.Open(str(path))
        assert abs(fetched.RasterYSize - source.RasterYSize) <= 1
        rows, cols = min(fetched.RasterYSize, source.RasterYSize), min(fetched.RasterXSize, source.RasterXSize)
        a = fetched.ReadAsArray()[:3, :rows, :cols].astype(float)
        b = source.ReadAsArray()[:, :rows, :cols].astype(float)
        assert np.mean(np.abs(a[:, 2:-2, 2:-2] - b[:, 2:-2, 2:-2])) < 10


@pytest.fixture
def plugin(qgis_iface, qgis_processing, tiny_model_dir, monkeypatch):
    from tests.qgis_helpers import import_plugin_package, install_plugins_menu

    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(tiny_model_dir))
    menu = install_plugins_menu(qgis_iface)
    instance = import_plugin_package().classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()
    qgis_iface.mainWindow().menuBar().removeAction(menu.menuAction())


def test_detect_dialog_on_xyz_layer_runs_in_the_background(plugin, xyz_server, xyz_layer, qgis_iface):
    """The button path: the dialog starts on the map extent for a web map, the task fetches on its worker thread."""
    from building_footprints.footprint_plugin.gui.detect_dialog import AREA_CANVAS

    from tests.qgis_helpers import wait_until

    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(xyz_layer.crs())
    canvas.resize(400, 400)
    canvas.setExtent(_served_extent(xyz_server))
    qgis_iface.setActiveLayer(xyz_layer)
    plugin.detect_action.trigger()
    dialog = plugin._dialogs["detect"]
    assert dialog.areaCombo.currentIndex() == AREA_CANVAS
    dialog.modelCombo.setCurrentIndex(dialog.modelCombo.findData("tiny_test_model"))
    dialog.thresholdSpin.setValue(0.01)
    dialog.minAreaSpin.setValue(1.0)
    dialog.deviceCombo.setCurrentText("cpu")
    dialog.accept()
    run = plugin.last_run
    assert run is not None and wait_until(lambda: run.done, limit_s=300)
    assert run.succeeded, run.error_text()
    names = sorted(layer.name().split(" — ")[0] for layer in run.loaded)
    assert names == ["Building probability", "Buildings"]
    assert QgsProject.instance().layerTreeRoot().findGroup("Kampala XYZ") is not None


@pytest.fixture(scope="module")
def failing_server():
    """A tile server that fails as real ones do: HTTP 500, garbage bytes with 200 OK, or no answer at all."""
    mode = {"now": "500"}
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            if mode["now"] == "hang":
                release.wait(30)  # accepts the connection, never answers
                return
            status, body = (500, b"Internal Server Error") if mode["now"] == "500" else (200, os.urandom(900))
            self.send_response(status)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"port": server.server_address[1], "mode": mode}
    release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode,message", [("500", "HTTP status 500"), ("garbage", "failed"), ("hang", "failed")])
def test_web_map_errors_are_errors(failing_server, qgis_processing, qgis_new_project, monkeypatch, mode, message):
    """A failing service is a failure naming the service and the HTTP status, retried, in bounded time; never
    "0 buildings"."""
    import time

    from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsRectangle

    from footprint_plugin.processing import webmap

    monkeypatch.setattr(webmap, "FETCH_REQUEST_TIMEOUT_S", 2.0)
    monkeypatch.setattr(webmap, "FETCH_TOTAL_S", 8.0)
    monkeypatch.setattr(webmap, "FETCH_RETRY_PAUSE_S", 0.1)
    failing_server["mode"]["now"] = mode
    url = f"http://127.0.0.1:{failing_server['port']}/{{z}}/{{x}}/{{y}}.png"
    layer = QgsRasterLayer(f"type=xyz&url={url}&zmax={ZOOM}&zmin={ZOOM}", "Broken XYZ", "wms")
    assert layer.isValid()
    area = QgsRectangle(3620000, 35000, 3620060, 35060)  # Kampala, one or two tiles
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        with pytest.raises(QgsProcessingException) as caught:
            webmap.fetch_area(layer, area, None, 0.5, Path(scratch), QgsProcessingFeedback(), QgsProcessingContext())
        assert list(Path(scratch).iterdir()) == [], "a failed fetch left its file"
    text = str(caught.value)
    assert "Broken XYZ" in text and f"127.0.0.1:{failing_server['port']}" in text and message in text, text
    assert "attempt" in text and "Traceback" not in text
    assert time.monotonic() - started < 60
