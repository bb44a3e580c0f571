"""End-to-end engine pipeline (inference -> polygons -> vector) and the `detect`/`models` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import REPO_ROOT, synthetic_buildings

from footprint_plugin.core.common.errors import CanceledError, InputError
from footprint_plugin.core.io.vector_io import read_polygons
from footprint_plugin.core.zoo.modelcard import ModelCard


@pytest.fixture
def random_model_card(tmp_path, monkeypatch) -> ModelCard:
    """A small random-weight EO model saved in the (isolated) user model folder."""
    # zero_head: a random network then outputs 0.5 everywhere, so some pixels still pass the threshold.
    from footprint_plugin.core.zoo.modelcard import load_card
    from tests.qgis_helpers import make_tiny_model

    return load_card(
        make_tiny_model(name="test_random_eo", scaling={"method": "divide", "value": 255.0}, tta="d4", zero_head=True)
    )


def _with_buildings_everywhere(card: ModelCard):
    """The model: a network that says 'building' exactly where the image is bright."""
    import torch

    class Bright(torch.nn.Module):
        def forward(self, x):
            return (x.mean(dim=1, keepdim=True) - 0.5) * 40.0

    return Bright()


def test_detect_buildings_writes_both_outputs_on_the_input_grid(tmp_path, random_model_card):
    from footprint_plugin.core.engine.pipeline import detect_buildings

    image, mask = synthetic_buildings(384, seed=1)
    raster = tmp_path / "scene.tif"
    from conftest import write_geotiff

    write_geotiff(raster, image, crs="EPSG:32631")
    out = tmp_path / "buildings.gpkg"
    prob = tmp_path / "probability.tif"
    fractions = []
    result = detect_buildings(
        raster,
        out,
        random_model_card,
        probability_path=prob,
        progress=fractions.append,
        model=_with_buildings_everywhere(random_model_card),
    )
    assert out.exists() and prob.exists()
    assert fractions and fractions[-1] == pytest.approx(1.0)
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:])), "progress went backwards"
    with rasterio.open(raster) as src, rasterio.open(prob) as dst:
        assert (dst.width, dst.height, dst.crs, dst.transform) == (src.width, src.height, src.crs, src.transform)
    vectors = read_polygons(out)
    assert len(vectors.geometries) == result.n_buildings > 5
    assert set(vectors.attributes[0]) >= {
        "score",
        "area_m2",
        "perimeter_m",
        "compactness",
        "regularized",
        "source",
        "model",
    }
    assert vectors.attributes[0]["source"] == "scene.tif"
    assert "EPSG" in (vectors.crs_wkt or "") or "UTM zone 31N" in (vectors.crs_wkt or "")
    assert result.megapixels == pytest.approx(384 * 384 / 1e6, rel=1e-3)
    assert result.device == "cpu"
    # Buildings sit on the bright roofs we drew.
    assert sum(g.area for g in vectors.geometries) == pytest.approx(mask.sum() * 0.25, rel=0.35)


def test_progress_moves_before_the_first_tile(tmp_path, random_model_card):
    """The statistics pass and the model load report small fractions, so a dialog's bar moves before
    the first tile batch runs (a large raster's statistics or a model load can take many seconds)."""
    import torch
    from conftest import write_geotiff

    from footprint_plugin.core.engine.pipeline import detect_buildings

    events: list = []

    class MarksTiles(torch.nn.Module):
        def forward(self, x):
            events.append("tiles")
            return (x.mean(dim=1, keepdim=True) - 0.5) * 40.0

    raster = write_geotiff(tmp_path / "scene.tif", synthetic_buildings(256, seed=3)[0])
    detect_buildings(raster, tmp_path / "b.gpkg", random_model_card, progress=events.append, model=MarksTiles())
    assert "tiles" in events, "the network never ran"
    before = events[: events.index("tiles")]
    early = sorted({value for value in before if value < 0.1})
    assert len(early) >= 3, f"progress before the first tile batch: {before}"
    assert all(b >= a - 1e-9 for a, b in zip(before, before[1:])), "progress went backwards"
    numbers = [value for value in events if value != "tiles"]
    assert numbers[-1] == pytest.approx(1.0)


def test_cancel_leaves_no_outputs_and_keeps_existing_files(tmp_path, random_model_card):
    from conftest import write_geotiff

    from footprint_plugin.core.engine.pipeline import detect_buildings

    raster = write_geotiff(tmp_path / "scene.tif", synthetic_buildings(512, seed=2)[0])
    out = tmp_path / "buildings.gpkg"
    prob = tmp_path / "probability.tif"
    prob.write_bytes(b"earlier result the user still wants")
    calls = {"n": 0}

    def cancel_after_a_few_checks() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(CanceledError):
        detect_buildings(raster, out, random_model_card, probability_path=prob, is_canceled=cancel_after_a_few_checks)
    assert not out.exists()
    assert prob.read_bytes() == b"earlier result the user still wants"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in {"scene.tif", "probability.tif"})
    assert leftovers == [], f"half-written files left behind: {leftovers}"


def test_missing_raster_is_a_clear_input_error(tmp_path, random_model_card):
    from footprint_plugin.core.engine.pipeline import detect_buildings

    with pytest.raises(InputError, match="not found|does not exist|No such"):
        detect_buildings(tmp_path / "nope.tif", tmp_path / "b.gpkg", random_model_card)
    assert not (tmp_path / "b.gpkg").exists()


def _cli(*args: str, env_models: Path) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, FOOTPRINT_USER_MODELS=str(env_models), OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, "-m", "footprint_plugin", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_detect_and_models_print_json_summaries(tmp_path, random_model_card):
    from conftest import write_geotiff

    models_dir = random_model_card.path.parent
    listing = _cli("models", "--json", env_models=models_dir)
    assert listing.returncode == 0, listing.stderr
    names = [m["name"] for m in json.loads(listing.stdout.strip().splitlines()[-1])["models"]]
    assert "test_random_eo" in names

    raster = write_geotiff(tmp_path / "scene.tif", synthetic_buildings(256, seed=3)[0])
    out = tmp_path / "b.gpkg"
    run = _cli(
        "detect",
        str(raster),
        "--out",
        str(out),
        "--model",
        "test_random_eo",
        "--device",
        "cpu",
        "--json",
        env_models=models_dir,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["device"] == "cpu" and summary["model"].startswith("test_random_eo")
    assert out.exists() and summary["n_buildings"] >= 0

    bad = _cli("detect", str(raster), "--out", str(out), "--model", "no_such_model", env_models=models_dir)
    assert bad.returncode == 2
    assert "Unknown model 'no_such_model'" in bad.stderr and "test_random_eo" in bad.stderr


def test_bands_mismatch_names_both_counts(tmp_path, random_model_card):
    from conftest import write_geotiff

    from footprint_plugin.core.common.errors import FootprintError
    from footprint_plugin.core.engine.pipeline import detect_buildings

    raster = write_geotiff(tmp_path / "two_bands.tif", np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(FootprintError) as info:
        detect_buildings(raster, tmp_path / "b.gpkg", random_model_card)
    assert "2" in str(info.value) and "3" in str(info.value)


def test_probability_raster_records_the_threshold_used(tmp_path, random_model_card):
    """The FOOTPRINT_THRESHOLD tag is the threshold the polygons used, not only the card's."""
    from conftest import write_geotiff

    from footprint_plugin.core.engine.pipeline import detect_buildings
    from footprint_plugin.core.vectors.polygons import PolygonOptions

    image, _mask = synthetic_buildings(128, seed=3)
    raster = write_geotiff(tmp_path / "scene.tif", image, crs="EPSG:32631")
    for threshold, name in ((None, "card"), (0.3, "chosen")):
        options = PolygonOptions(threshold=threshold) if threshold is not None else None
        prob = tmp_path / f"{name}.tif"
        detect_buildings(
            raster, tmp_path / f"{name}.gpkg", random_model_card, probability_path=prob, polygon_options=options
        )
        with rasterio.open(prob) as dataset:
            tag = dataset.tags()["FOOTPRINT_THRESHOLD"]
        assert float(tag) == (threshold if threshold is not None else random_model_card.threshold)
