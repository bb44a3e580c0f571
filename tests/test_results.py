"""Styled, grouped results on every path: the toolbox's own result handling (processing.runAndLoadResults
runs the same handleAlgorithmResults as the toolbox and batch mode), our button's load_outputs, and the
styles embedded in the files for qgis_process."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsVectorLayer

KAMPALA = "eo/hotosm_kampala"


@pytest.fixture
def kampala_tile(shared_data) -> Path:
    return sorted((shared_data / KAMPALA / "tiles").glob("OAM-*-19.tif"))[0]


def _group_layers(name: str) -> dict[str, object]:
    group = QgsProject.instance().layerTreeRoot().findGroup(name)
    assert group is not None, [g.name() for g in QgsProject.instance().layerTreeRoot().findGroups()]
    return {node.layer().name(): node.layer() for node in group.findLayers()}


def _kind(name: str) -> str:
    """'Buildings — tile (model)' -> 'Buildings': the layer names say input and model after a dash."""
    return name.split(" — ")[0]


def _assert_styled(layers: dict) -> None:
    assert [_kind(name) for name in layers] == ["Buildings", "Building probability"]  # outlines on top
    buildings, probability = (
        next(v for k, v in layers.items() if _kind(k) == kind) for kind in ("Buildings", "Building probability")
    )
    assert buildings.renderer().type() == "singleSymbol"
    symbol = buildings.renderer().symbol()
    assert symbol.symbolLayer(0).brushStyle() != 1 or symbol.color().alpha() < 255  # not an opaque random fill
    renderer = probability.renderer()
    assert renderer.type() == "singlebandpseudocolor" and renderer.band() == 1  # the footprint head only
    items = renderer.shader().rasterShaderFunction().colorRampItemList()
    assert [i.color.alpha() for i in items if i.value <= 0.2] == [0, 0]  # transparent where unlikely
    assert probability.bandCount() == 1 or probability.dataProvider().bandCount() >= 1  # other heads stay in the file


def test_toolbox_run_gives_styled_group_and_repeat_gets_new_name(
    provider, tiny_model, kampala_tile, tmp_path, qgis_new_project
):
    import processing
    from qgis.core import QgsProcessingFeedback

    layer = QgsRasterLayer(str(kampala_tile), "Kampala tile")
    QgsProject.instance().addMapLayer(layer)
    feedback = QgsProcessingFeedback()
    for run in (1, 2):
        processing.runAndLoadResults(
            "footprint:detectbuildings",
            {
                "INPUT": layer.id(),
                "MODEL": tiny_model,
                "DEVICE": "cpu",
                "THRESHOLD": 0.01,
                "MIN_AREA": 1.0,
                "OUTPUT": "TEMPORARY_OUTPUT",
                "PROBABILITY": str(tmp_path / f"probability_{run}.tif"),
            },
            feedback=feedback,
        )
    assert "not correctly generated" not in feedback.textLog()
    _assert_styled(_group_layers("Kampala tile"))
    _assert_styled(_group_layers("Kampala tile (2)"))
    first, second = list(_group_layers("Kampala tile")), list(_group_layers("Kampala tile (2)"))
    assert first[0] == "Buildings — Kampala tile (tiny_test_model v1.0)", first
    assert first[1] == "Building probability — Kampala tile"
    assert second == [first[0] + " (2)", first[1] + " (2)"]  # two runs: names a layer picker tells apart
    assert _group_layers("Kampala tile")[first[0]].providerType() == "memory"


def test_files_carry_their_style_for_qgis_process(provider, tiny_model, kampala_tile, tmp_path):
    import processing

    out = tmp_path / "buildings.gpkg"
    results = processing.run(
        "footprint:detectbuildings",
        {
            "INPUT": str(kampala_tile),
            "MODEL": tiny_model,
            "DEVICE": "cpu",
            "THRESHOLD": 0.01,
            "MIN_AREA": 1.0,
            "OUTPUT": str(out),
            "PROBABILITY": str(tmp_path / "probability.tif"),
        },
    )
    with sqlite3.connect(out) as db:
        rows = db.execute("SELECT stylename, useasdefault FROM layer_styles").fetchall()
    assert rows == [("Buildings", 1)]
    assert (tmp_path / "probability.qml").is_file()
    # Opened anywhere in QGIS later, both come up styled, without our plugin.
    reopened = QgsVectorLayer(str(results["OUTPUT"]), "b", "ogr")
    assert reopened.renderer().type() == "singleSymbol"
    raster = QgsRasterLayer(str(tmp_path / "probability.tif"), "p")
    assert raster.renderer().type() == "singlebandpseudocolor"


def test_button_path_loads_like_the_toolbox(provider, tiny_model, kampala_tile, tmp_path, qgis_new_project):
    """gui.tasks' AlgorithmRun + results.load_outputs: the same post-processors as the toolbox."""
    from qgis.core import QgsProcessingOutputLayerDefinition

    from footprint_plugin.gui.tasks import AlgorithmRun
    from tests.qgis_helpers import wait_until

    layer = QgsRasterLayer(str(kampala_tile), "button input")
    QgsProject.instance().addMapLayer(layer)
    finished = []
    parameters = {
        "INPUT": layer.source(),
        "MODEL": tiny_model,
        "DEVICE": "cpu",
        "THRESHOLD": 0.01,
        "MIN_AREA": 1.0,
        "OUTPUT": QgsProcessingOutputLayerDefinition(str(tmp_path / "b.gpkg"), QgsProject.instance()),
        "PROBABILITY": QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", QgsProject.instance()),
    }
    run = AlgorithmRun("footprint:detectbuildings", parameters, lambda ok, res, r: finished.append(ok)).start()
    assert wait_until(lambda: run.done, limit_s=300)
    assert finished == [True], run.error_text()
    assert len(run.loaded) == 2
    _assert_styled(_group_layers("button input"))


def test_enums_accept_documented_numbers(provider, tiny_model, kampala_tile, tmp_path):
    """`qgis_process help` documents MODEL/DEVICE as the number of the option: numbers and names both work."""
    import processing

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("footprint:detectbuildings")
    model_index = algorithm.parameterDefinition("MODEL").options().index(tiny_model)
    results = processing.run(
        "footprint:detectbuildings",
        {
            "INPUT": str(kampala_tile),
            "MODEL": model_index,
            "DEVICE": "1",
            "THRESHOLD": 0.01,
            "MIN_AREA": 1.0,
            "OUTPUT": str(tmp_path / "b.gpkg"),
        },
    )
    assert results["MODEL_USED"].startswith(tiny_model) and "cpu" in results["DEVICE_USED"].lower()
