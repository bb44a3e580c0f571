"""Fine-tuning for the user's own area: a time budget the schedule fills, corrections with reviewed cells as
the area of interest, the card's provenance, one model folder, and deleting a model with its reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from test_training import make_pair, small_config

from footprint_plugin.core.common.errors import ModelError
from footprint_plugin.core.common.vocabulary import BUILDING_FIELDS, default_budget_minutes
from footprint_plugin.core.io.vector_io import read_polygons, write_polygons
from footprint_plugin.core.learning.cards import held_out_matches
from footprint_plugin.core.learning.chips import ChipSampler, prepare_raster
from footprint_plugin.core.learning.schedule import TimeBudget
from footprint_plugin.core.learning.training import TrainingPair, train_model
from footprint_plugin.core.zoo.modelcard import delete_model, find_model, load_card, user_model_dir
from tests.qgis_helpers import make_tiny_model

UTM = "EPSG:32631"
ORIGIN = (600000.0, 5750000.0)
BASE_SOURCES = [{"source": "Base imagery", "licence": "CC BY 4.0", "credit": "Base credit"}]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def base_card(tmp_path):
    """A small random-weight base model whose card names its sources, licence and held-out areas."""
    path = make_tiny_model(
        tmp_path / "base_models",
        name="base_tiny",
        threshold=0.5,
        training_data=BASE_SOURCES,
        licence="Weights: GPL. Data: CC BY 4.0.",
        extra={"training": {"test_areas": ["held_town_z20"]}, "held_out_user_path": {"no_tta": {"far_city": 0.4}}},
    )
    return load_card(path)


def _cell(col: int, row: int, size_m: float = 40.0):
    x0, y1 = ORIGIN[0] + col * size_m, ORIGIN[1] - row * size_m
    return shapely.box(x0, y1 - size_m, x0 + size_m, y1)


def _corrections(tmp_path: Path, pair: TrainingPair, keep) -> tuple[Path, list]:
    """The plugin's own building layer (every output field) after the user deleted the detections `keep` rejects."""
    polygons = [p for p in read_polygons(pair.labels).geometries if keep(p)]
    attributes = [
        {"score": 0.9, "area_m2": p.area, "perimeter_m": p.length, "compactness": 0.7, "regularized": False}
        | {"source": pair.raster.name, "model": "base_tiny v1.0"}
        for p in polygons
    ]
    assert set(attributes[0]) == set(BUILDING_FIELDS)
    return write_polygons(tmp_path / "Corrections.gpkg", polygons, attributes, UTM), polygons


def test_time_budget_schedule_and_default():
    budget = TimeBudget(100.0)
    assert budget.room_for_another_epoch(0.0) and budget.training_deadline() == pytest.approx(92.0)
    budget.record_epoch(10.0, validation_seconds=2.0)
    assert budget.finish_estimate() == pytest.approx(8.0)
    assert budget.planned_epochs(done=1, elapsed=12.0, cap=1000) == 9  # 80 s left at 10 s an epoch
    assert budget.planned_epochs(done=1, elapsed=12.0, cap=4) == 4  # --epochs only caps
    assert budget.room_for_another_epoch(86.0) and not budget.room_for_another_epoch(88.0)
    assert TimeBudget(None).room_for_another_epoch(1e9) and TimeBudget(None).fraction_used(5.0) == 0.0
    assert default_budget_minutes("cpu") == 5.0 and default_budget_minutes("cuda") == 2.0


def test_budget_fine_tune_fills_the_budget_and_records_provenance(tmp_path, base_card):
    """A real fine-tune without an epoch count: epochs come from measured times and the run fills its 24 s."""
    pair = make_pair(tmp_path, "town", seed=3, size=256)
    cells = write_polygons(tmp_path / "cells.gpkg", [_cell(0, 0), _cell(2, 1), _cell(1, 2)], [{}] * 3, UTM)
    labels, polygons = _corrections(tmp_path, pair, keep=lambda p: True)
    pair = TrainingPair(pair.raster, labels, cells, name="town")
    messages: list[str] = []
    budget_minutes = 0.4
    config = small_config(
        tmp_path,
        base_model=str(base_card.path),
        epochs=None,
        max_minutes=budget_minutes,
        val_areas=None,
        patience=None,
        labels_source="Corrections",
    )
    started = time.monotonic()
    result = train_model([pair], config, log=messages.append)
    seconds = time.monotonic() - started
    assert 0.8 * budget_minutes * 60 <= seconds <= 1.2 * budget_minutes * 60, (seconds, messages[-6:])
    card = load_card(result.card_path)
    assert card.metrics["stop_reason"] == "time budget" and card.metrics["epochs_trained"] >= 3
    epoch_lines = [m for m in messages if m.startswith("epoch ")]
    assert epoch_lines and all("loss" in m and "ETA" in m for m in epoch_lines)
    assert card.extra["training"]["budget_minutes"] == budget_minutes
    # Provenance: the base's sources and licence first, then the user's polygons, budget and validation score.
    assert card.training_data[0] == BASE_SOURCES[0]
    added = card.training_data[-1]["source"]
    assert added.startswith("user polygons from Corrections, ") and added.endswith(" buildings in 3 cells")
    fine_tune = card.extra["fine_tune"]
    assert fine_tune["base_model"] == "base_tiny (v1.0)" and fine_tune["budget_minutes"] == budget_minutes
    assert fine_tune["n_cells"] == 3 and 0 < fine_tune["n_buildings"] <= len(polygons)
    validation = card.metrics.get("validation")
    assert fine_tune["validation_f1"] == (validation["f1"] if validation else None)
    assert "held_town_z20" in fine_tune["base_held_out_note"] and "far_city" in fine_tune["base_held_out_note"]
    assert "no longer apply" in fine_tune["base_held_out_note"]
    assert card.licence.startswith("Weights: GPL. Data: CC BY 4.0.")
    assert "Fine-tuned from base_tiny" in result.summary and "{" not in result.summary


def test_epochs_cap_a_budget(tmp_path, base_card, two_areas_small):
    config = small_config(tmp_path, base_model=str(base_card.path), epochs=2, max_minutes=5.0)
    result = train_model(two_areas_small, config)
    assert result.metrics["epochs_trained"] == 2 and result.metrics["stop_reason"] == "epochs"


@pytest.fixture
def two_areas_small(tmp_path):
    return [make_pair(tmp_path, "train", seed=1), make_pair(tmp_path, "val", seed=2, origin_x=601000.0)]


def test_corrections_with_reviewed_cells(tmp_path, base_card):
    """Inside the reviewed cells every unlabelled pixel is a negative; outside them nothing counts."""
    pair = make_pair(tmp_path, "town", seed=4, size=256)
    everything = read_polygons(pair.labels).geometries
    reviewed = [_cell(0, 0), _cell(2, 2)]
    # The user deleted every detection in the second cell (false positives): it is now an empty reviewed cell.
    labels, kept = _corrections(tmp_path, pair, keep=lambda p: not p.intersects(reviewed[1]))
    cells = write_polygons(tmp_path / "cells.gpkg", reviewed, [{}] * 2, UTM)
    card = find_model(str(base_card.path))
    prepared = prepare_raster(pair.raster, labels, cells, "town", card, ["footprint"], 1.0)
    transform = prepared.transform
    rows, cols = np.mgrid[0 : prepared.shape[0], 0 : prepared.shape[1]]
    xs, ys = transform * (cols + 0.5, rows + 0.5)
    in_cells = np.zeros(prepared.shape, bool)
    for cell in reviewed:
        x0, y0, x1, y1 = cell.bounds
        in_cells |= (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
    assert np.array_equal(prepared.supervised, in_cells)
    empty_cell = np.zeros(prepared.shape, bool)
    x0, y0, x1, y1 = reviewed[1].bounds
    empty_cell |= (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
    assert any(p.intersects(reviewed[1]) for p in everything)  # there were detections there
    assert prepared.targets[0][empty_cell].sum() == 0 and prepared.supervised[empty_cell].all()  # negatives
    # The sampler's loss weights are zero outside the cells, so labels there cannot matter.
    sampler = ChipSampler([prepared], 64, empty_chip_ratio=0.5)
    for window in sampler.sample(16, np.random.default_rng(0)):
        _image, _target, weight = sampler.extract(window)
        r0, c0 = window.row, window.col
        outside = ~np.pad(in_cells, 64)[r0 + 64 : r0 + 128, c0 + 64 : c0 + 128]
        assert weight[outside].sum() == 0
    # End to end: moving, adding or deleting labels outside the cells trains exactly the same weights.
    outside_changed = [p for p in kept if any(p.intersects(c) for c in reviewed)] + [_cell(5, 5, 8.0)]
    other = write_polygons(tmp_path / "Corrections_b.gpkg", outside_changed, [{}] * len(outside_changed), UTM)
    shas = []
    for labels_path, name in ((labels, "a"), (other, "b")):
        config = small_config(tmp_path, out_name=f"tuned_{name}", base_model=str(base_card.path), epochs=1)
        config.val_areas, config.val_fraction = None, 0.3
        shas.append(
            load_card(train_model([TrainingPair(pair.raster, labels_path, cells, "town")], config).card_path).sha256
        )
    assert shas[0] == shas[1]


def test_held_out_areas_are_recognised_in_raster_paths(base_card):
    assert held_out_matches(base_card, ["/data/eo/held_town/mosaic_z20.vrt"]) == ["held_town_z20"]
    assert held_out_matches(base_card, ["/data/eo/held_town/mosaic_z19.vrt"]) == []
    assert held_out_matches(base_card, ["/x/far_city/tiles/a.tif", "/x/other.tif"]) == ["far_city"]
    bundled = find_model("footprint_eo_lite0")
    assert "xview2_joplin_pre" in held_out_matches(bundled, ["/shared/data/eo/xview2_joplin_pre/tiles/tile_1.tif"])
    assert held_out_matches(bundled, ["/shared/data/eo/spacenet1_rio/tiles/a.tif"]) == []


def _fake_model(folder: Path, name: str) -> Path:
    """A card + weights + training reports on disk (delete never loads the weights)."""
    make_tiny_model(folder, name=name)
    reports = folder / "training_reports"
    reports.mkdir(exist_ok=True)
    (reports / f"{name}.png").write_bytes(b"\x89PNG")
    (reports / f"{name}.json").write_text("{}")
    (reports / "someone_else.png").write_bytes(b"\x89PNG")
    return folder / f"{name}.json"


def test_delete_removes_reports_and_only_acts_in_the_user_folder(tmp_path, monkeypatch):
    users = tmp_path / "users"
    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(users))
    card = load_card(_fake_model(users, "mine"))
    removed = delete_model(card, only_in=user_model_dir())
    assert len(removed) == 4 and {p.name for p in removed} == {"mine.json", "mine.pt", "mine.png"}
    assert sorted(p.name for p in users.rglob("*")) == ["someone_else.png", "training_reports"]
    elsewhere = load_card(_fake_model(tmp_path / "elsewhere", "theirs"))
    with pytest.raises(ModelError, match="not in the user model folder"):
        delete_model(elsewhere, only_in=user_model_dir())
    assert elsewhere.path.exists() and (tmp_path / "elsewhere" / "theirs.pt").exists()
    # The CLI passes the user folder: a card given by path outside it is refused, nothing deleted.
    env = {**os.environ, "FOOTPRINT_USER_MODELS": str(users), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "footprint_plugin", "models", "--delete", str(elsewhere.path), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
    assert done.returncode != 0 and "not in the user model folder" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and elsewhere.path.exists()


def test_gui_and_cli_share_one_model_folder(tmp_path):
    """The plugin no longer points the user model folder into the QGIS profile: both use user_model_dir()."""
    script = """
import json, os, sys
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.initQgis()
from footprint_plugin.core.zoo.modelcard import user_model_dir
before = str(user_model_dir())
from footprint_plugin.plugin import FootprintPlugin
plugin = FootprintPlugin(None)
plugin.initProcessing()
print(json.dumps([before, str(user_model_dir()), os.environ.get("FOOTPRINT_USER_MODELS")]))
"""
    profile = tmp_path / "profile"
    (profile / "footprint_plugin" / "models").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "FOOTPRINT_USER_MODELS"}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), QGIS_CUSTOM_CONFIG_PATH=str(profile), QT_QPA_PLATFORM="offscreen")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, variable = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == after == str(tmp_path / "data" / "footprint_plugin" / "models") and variable is None
    cli = subprocess.run(
        [sys.executable, "-m", "footprint_plugin", "models", "--json"], capture_output=True, text=True, env=env
    )
    assert f"User model folder: {tmp_path / 'data' / 'footprint_plugin' / 'models'}" in cli.stdout + cli.stderr


def test_validation_block_holds_labels_or_says_it_is_impossible(tmp_path, base_card):
    """Labels only in the west of the area: the held-out block still holds some; with none, the run says so."""
    from footprint_plugin.core.learning.dataset import has_labelled_validation, split_areas

    pair = make_pair(tmp_path, "town", seed=5, size=256)
    west = [p for p in read_polygons(pair.labels).geometries if p.centroid.x < ORIGIN[0] + 50.0]
    labels = write_polygons(tmp_path / "west.gpkg", west, [{}] * len(west), UTM)
    card = find_model(str(base_card.path))
    raster = prepare_raster(pair.raster, labels, None, "town", card, ["footprint"], 1.0)
    config = small_config(tmp_path, val_areas=None)
    split_areas([raster], config, log=lambda _m: None)
    held_out = raster.eval_mask()
    assert held_out is not None and (raster.targets[0][held_out] > 0).any()
    messages: list[str] = []
    assert has_labelled_validation([raster], messages.append) and not messages
    raster.val_mask = np.zeros(raster.shape, bool)
    raster.val_mask[:, -20:] = True  # an eastern strip of bare ground
    raster.targets[0][:, -20:] = 0
    assert not has_labelled_validation([raster], messages.append)
    assert "validation is impossible" in messages[-1] and "holds no labelled building" in messages[-1]


def test_cli_finetune_fills_a_budget_by_default_and_train_counts_epochs():
    from footprint_plugin.cli import build_parser
    from footprint_plugin.core.common.vocabulary import DEFAULT_EPOCHS

    parser = build_parser()
    common = ["--raster", "r.tif", "--labels", "l.gpkg", "--out", "m"]
    finetune = parser.parse_args(["finetune", "--base", "footprint_eo_lite0", *common])
    assert finetune.epochs is None and finetune.max_minutes is None and finetune.patience is None
    capped = parser.parse_args(["finetune", "--base", "b", *common, "--epochs", "7", "--max-minutes", "3"])
    assert (capped.epochs, capped.max_minutes) == (7, 3.0)
    assert parser.parse_args(["train", *common]).epochs == DEFAULT_EPOCHS
