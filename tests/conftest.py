"""Shared fixtures: real data from ../shared (skipped when absent) and small GeoTIFFs built on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FOOTPRINT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Keep tests on 2-core machines predictable and never pick up a user's model folder.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# QGIS itself saves band statistics in <raster>.aux.xml when a test makes a layer of a raster (its default
# contrast stretch), and tests must leave ../shared untouched. The engine turns PAM off on its own reads;
# tests/test_raster_io.py turns it back on to prove that.
os.environ["GDAL_PAM_ENABLED"] = "NO"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Speed measurements (core/inference's cache) go to a session folder, never into ~/.cache.

    Set in os.environ (not monkeypatch, which is function-scoped) so CLI subprocesses inherit it.
    """
    previous = os.environ.get("FOOTPRINT_CACHE_DIR")
    os.environ["FOOTPRINT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("FOOTPRINT_CACHE_DIR", None)
    else:
        os.environ["FOOTPRINT_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def _isolated_user_models(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(tmp_path_factory.mktemp("user_models")))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder holding the random-weight `tiny_test_model` (see tests/qgis_helpers.make_tiny_model)."""
    from tests.qgis_helpers import make_tiny_model

    folder = tmp_path_factory.mktemp("models")
    make_tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def provider(qgis_processing):
    """Our Processing provider, registered for one test module."""
    from tests.qgis_helpers import registered_provider

    with registered_provider() as provider:
        yield provider


@pytest.fixture
def plugin(qgis_iface, qgis_processing, qgis_new_project, tiny_model_dir, monkeypatch):
    """The deployed plugin, its GUI started in the test QGIS (a new project), with the tiny model installed."""
    from tests.qgis_helpers import import_plugin_package, install_plugins_menu

    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(tiny_model_dir))
    menu = install_plugins_menu(qgis_iface)
    instance = import_plugin_package().classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()
    qgis_iface.mainWindow().menuBar().removeAction(menu.menuAction())


@pytest.fixture
def tiny_model(tiny_model_dir, monkeypatch) -> str:
    """The random-weight tiny_test_model, found by name through the user model folder."""
    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(tiny_model_dir))
    return "tiny_test_model"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data with real imagery and labels; tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (clone the project with ../shared beside it)")
    return SHARED_DATA


def write_geotiff(
    path: Path,
    array: np.ndarray,
    crs: str | None = "EPSG:32631",
    transform=None,
    nodata=None,
    tiled: bool = False,
) -> Path:
    """Write a (bands, rows, cols) array as a GeoTIFF; 0.5 m pixels in UTM by default."""
    import rasterio
    from rasterio.transform import from_origin

    if array.ndim == 2:
        array = array[np.newaxis]
    profile = {
        "driver": "GTiff",
        "height": array.shape[1],
        "width": array.shape[2],
        "count": array.shape[0],
        "dtype": array.dtype.name,
        "transform": transform or from_origin(600000.0, 5750000.0, 0.5, 0.5),
    }
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


@pytest.fixture
def make_geotiff(tmp_path):
    """Factory: make_geotiff(array, name='x.tif', **kwargs) -> path."""

    def factory(array: np.ndarray, name: str = "raster.tif", **kwargs) -> Path:
        return write_geotiff(tmp_path / name, array, **kwargs)

    return factory


def synthetic_buildings(size: int = 512, seed: int = 0, bands: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image with bright rectangular 'roofs' on textured ground, and its 0/1 mask."""
    rng = np.random.default_rng(seed)
    image = rng.normal(90, 12, (bands, size, size)).clip(0, 255)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(size * size // 4000):
        h, w = rng.integers(10, 40, 2)
        r, c = rng.integers(0, size - h), rng.integers(0, size - w)
        mask[r : r + h, c : c + w] = 1
        image[:, r : r + h, c : c + w] = rng.integers(170, 230)
    return image.astype(np.uint8), mask


def pytest_addoption(parser):
    parser.addoption("--run-desktop", action="store_true", default=False, help="run the real QGIS desktop tests (Xvfb)")


def pytest_collection_modifyitems(config, items):
    """Desktop tests run only with --run-desktop (make test passes it). Web-map tests run first: late in a full
    run, an earlier test leaves QGIS's PROJ state such that a fetched web-map raster loses its CRS (known and
    open, see the closing note of issues 20/23); first, they stay honest checks of the web-map path."""
    items.sort(key=lambda item: 0 if item.fspath.basename == "test_webmap.py" else 1)
    if config.getoption("--run-desktop"):
        return
    skip = pytest.mark.skip(reason="real QGIS desktop test: run it with `make test-desktop` (--run-desktop)")
    for item in items:
        if "desktop" in item.keywords:
            item.add_marker(skip)
