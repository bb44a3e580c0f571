"""`qgis_process.bin` (no project, nothing loaded) with the plugin deployed from its zip: the outputs carry
their style (GeoPackage layer_styles, a .qml beside the probability GeoTIFF), and MODEL/DEVICE take the
documented option numbers."""

from __future__ import annotations

import json
import sqlite3

from tests.qgis_helpers import make_tiny_model
from tests.test_packaging import config_root, needs_qgis_process, plugin_zip, run_qgis_process  # noqa: F401

KAMPALA_TILES = "eo/hotosm_kampala/tiles"


@needs_qgis_process
def test_qgis_process_outputs_are_styled_and_numbers_work(config_root, shared_data, tmp_path):  # noqa: F811
    from qgis.core import QgsRasterLayer, QgsVectorLayer

    models = tmp_path / "models"
    make_tiny_model(models)
    tile = sorted((shared_data / KAMPALA_TILES).glob("OAM-*-19.tif"))[0]
    help_text = run_qgis_process(config_root, "help", "footprint:detectbuildings", models=models, cwd=tmp_path).stdout
    options = [line.strip() for line in help_text.split("MODEL", 1)[1].split("DEVICE", 1)[0].splitlines()]
    model_number = next(line.split(":")[0].strip("- ") for line in options if line.endswith("tiny_test_model"))
    result = run_qgis_process(
        config_root, "run", "footprint:detectbuildings", "--json", "--",
        f"INPUT={tile}", f"MODEL={model_number}", "DEVICE=1", "THRESHOLD=0.01", "MIN_AREA=1",
        f"OUTPUT={tmp_path / 'buildings.gpkg'}", f"PROBABILITY={tmp_path / 'probability.tif'}",
        models=models, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    outputs = json.loads(result.stdout[result.stdout.index("{") :])["results"]
    assert outputs["MODEL_USED"].startswith("tiny_test_model") and "cpu" in outputs["DEVICE_USED"].lower()
    with sqlite3.connect(tmp_path / "buildings.gpkg") as db:
        assert db.execute("SELECT stylename, useasdefault FROM layer_styles").fetchall() == [("Buildings", 1)]
    assert QgsVectorLayer(str(tmp_path / "buildings.gpkg"), "b", "ogr").renderer().type() == "singleSymbol"
    raster = QgsRasterLayer(str(tmp_path / "probability.tif"), "p")
    assert raster.renderer().type() == "singlebandpseudocolor" and raster.renderer().band() == 1
