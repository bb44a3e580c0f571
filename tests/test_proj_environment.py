"""The engine's CRS must not depend on PROJ_DATA / PROJ_LIB, which QGIS's launchers set for QGIS's own PROJ.

rasterio's wheel bundles a newer PROJ that rejects an older proj.db. Each case runs in a fresh Python
(the environment a process starts with is the point), reads the real Atlanta tile and writes a
probability GeoTIFF in new worker threads, as QGIS tasks do.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ATLANTA = Path("eo/spacenet4_atlanta_pan/tiles/sample_geotiff.tif")
ATLANTA_NAME = "WGS 84 / UTM zone 16N"
ATLANTA_AUTHORITY = 'AUTHORITY["EPSG","32616"]]'  # top level: the CRS itself, not just its parts

# argv: raster, output folder, variable, folder, "start" (set before the engine runs) or "later".
PROBE = r"""
import json, os, sys, threading
from pathlib import Path

raster, out_dir, variable, folder, when = sys.argv[1:]
import numpy as np
from footprint_plugin.core.io import raster_io

results = {}


def probe(tag):
    info = raster_io.describe_raster(raster)
    with raster_io.opened(raster) as ds:
        crs, transform, epsg = ds.crs, ds.transform, ds.crs.to_epsg()
    results[tag] = {"epsg": epsg, "wkt": info.crs_wkt}
    # The engine's probability GeoTIFF, written from this thread with the CRS it read.
    out = Path(out_dir) / f"{tag}.tif"
    writer = raster_io.ProbabilityWriter(out, 64, 64, ["building"], crs, transform)
    writer.write_rows(np.full((1, 64, 64), 0.5, np.float32), np.ones((64, 64), bool))
    writer.commit()
    results[tag]["written"] = str(out)


def in_new_thread(tag):
    thread = threading.Thread(target=probe, args=(tag,))
    thread.start()
    thread.join()


if when == "later":
    probe("main before")  # the engine already ran once in a clean environment...
    os.environ[variable] = folder  # ...then something in the session points PROJ elsewhere
in_new_thread("worker 1")
probe("main")
in_new_thread("worker 2")
for tag in list(results):
    results[tag]["written_wkt"] = raster_io.describe_raster(results[tag]["written"]).crs_wkt
results["environment"] = os.environ.get(variable)
print("RESULT " + json.dumps(results))
"""


def _rasterio_proj_db() -> Path:
    from rasterio._env import PROJDataFinder

    folder = PROJDataFinder().search_wheel()
    if not folder:
        pytest.skip("rasterio has no bundled PROJ data (built on the system's PROJ): nothing can conflict")
    return Path(folder) / "proj.db"


def _layout_minor(proj_db: Path) -> int:
    with sqlite3.connect(f"file:{proj_db}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM metadata WHERE key = 'DATABASE.LAYOUT.VERSION.MINOR'").fetchone()
    return int(row[0])


def _older_proj_data(tmp_path: Path) -> Path:
    """A PROJ data folder as an older PROJ installs it: rasterio's proj.db marked with an older layout."""
    folder = tmp_path / "older_proj"
    folder.mkdir()
    shutil.copy(_rasterio_proj_db(), folder / "proj.db")
    with sqlite3.connect(folder / "proj.db") as db:
        db.execute("UPDATE metadata SET value = '2' WHERE key = 'DATABASE.LAYOUT.VERSION.MINOR'")
    return folder


def _system_proj_data() -> Path:
    """QGIS's own PROJ data folder where it is older than rasterio's (Debian's QGIS 3.22: PROJ 9.1)."""
    newest = _layout_minor(_rasterio_proj_db())
    for folder in (Path("/usr/share/proj"), Path("/usr/local/share/proj")):
        if (folder / "proj.db").is_file() and _layout_minor(folder / "proj.db") < newest:
            return folder
    pytest.skip("no system PROJ with an older proj.db than rasterio's here")


def _run_probe(raster: Path, out_dir: Path, variable: str, folder: Path, when: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PROJ_DATA", "PROJ_LIB")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if when == "start":
        env[variable] = str(folder)  # as OSGeo4W's, QGIS.app's or conda's launcher does
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(raster), str(out_dir), variable, str(folder), when],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"probe failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize("source", ["older_copy", "system"])
@pytest.mark.parametrize(("variable", "when"), [("PROJ_LIB", "start"), ("PROJ_DATA", "later")])
def test_engine_crs_ignores_foreign_proj_data(shared_data, tmp_path, source, variable, when):
    raster = shared_data / ATLANTA
    if not raster.is_file():
        pytest.skip(f"{raster} is missing from the shared data")
    folder = _older_proj_data(tmp_path) if source == "older_copy" else _system_proj_data()
    results = _run_probe(raster, tmp_path, variable, folder, when)

    assert results.pop("environment") == str(folder), "the engine must leave QGIS's PROJ variables alone"
    assert {"worker 1", "main", "worker 2"} <= set(results)
    for tag, found in results.items():
        assert found["epsg"] == 32616, f"{tag}: EPSG {found['epsg']}, WKT {found['wkt']}"
        for key in ("wkt", "written_wkt"):
            wkt = found[key]
            assert wkt.startswith(f'PROJCS["{ATLANTA_NAME}"') and wkt.endswith(ATLANTA_AUTHORITY), f"{tag} {key}: {wkt}"
