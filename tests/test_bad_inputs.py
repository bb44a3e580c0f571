"""The bad-input matrix (issue 11): the CLI, Processing and the model manager refuse bad inputs and
outputs with a clear message, never a traceback, never touching an input, never leaving files behind.

Each case asserts: the message (and no "Traceback"), the exit status (CLI) or the exception type,
the sha256 of every input unchanged, and no new file in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from conftest import REPO_ROOT, synthetic_buildings, write_geotiff
from rasterio.transform import from_origin

from footprint_plugin.core.common.errors import FootprintError, ModelError

BUNDLED = "footprint_eo_mobilenet"
# Every bundled model, whichever is the default (the corrupt user cards must not hide any of them).
BUNDLED_NAMES = sorted(path.stem for path in (REPO_ROOT / "model_zoo").glob("*.json"))


# ---------------------------------------------------------------------------------------------
# Inputs built once: good files, broken files, and model cards good and bad


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"


def _write_vectors(folder: Path) -> None:
    import shapely

    from footprint_plugin.core.io.vector_io import write_polygons

    boxes = [shapely.box(600010 + 20 * i, 5749900, 600020 + 20 * i, 5749910) for i in range(4)]
    attrs = [{"score": 0.9} for _ in boxes]
    write_polygons(folder / "pred.gpkg", boxes, attrs, "EPSG:32631")
    write_polygons(folder / "gt.gpkg", boxes, attrs, "EPSG:32631")
    (folder / "broken.json").write_text('{"type": "FeatureCollection", "features": [', encoding="utf-8")
    # No "crs" member, so GeoJSON means lon/lat, but the numbers are UTM metres.
    feature = {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(boxes[0])}
    (folder / "utm_nocrs.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    # A GeoPackage that already holds our layers beside the user's `roads` (outputs must never drop them).
    write_polygons(folder / "multi.gpkg", boxes, attrs, "EPSG:32631", layer_name="roads")
    for layer in ("buildings", "true_positives"):
        write_polygons(folder / "multi.gpkg", boxes[:1], attrs[:1], "EPSG:32631", layer_name=layer)
    points = [{"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [32.58, 0.31]}}]
    (folder / "points.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": points}))


def _write_rasters(folder: Path) -> None:
    image = synthetic_buildings(256, seed=4)[0]
    write_geotiff(folder / "in.tif", image)
    data = (folder / "in.tif").read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 3])
    (folder / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(4000))
    (folder / "empty.tif").write_bytes(b"")
    (folder / "missing_source.vrt").write_text(
        '<VRTDataset rasterXSize="256" rasterYSize="256"><SRS>EPSG:32631</SRS>'
        "<GeoTransform>600000, 0.5, 0, 5750000, 0, -0.5</GeoTransform>"
        '<VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename relativeToVRT="1">gone.tif'
        "</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    (folder / "a_folder.tif").mkdir()


def _write_cards(folder: Path, weights: Path) -> None:
    """Cards to import: each one wrong in one way (beside real torch weights)."""
    from footprint_plugin.core.zoo.modelcard import load_card

    good = load_card(REPO_ROOT / "model_zoo" / f"{BUNDLED}.json").to_dict()
    shutil.copy(weights, folder / "weights.pt")
    variants = {
        "card_traversal.json": {"name": "../../x"},
        "card_absolute.json": {"name": "/abs/x"},
        "card_passwd.json": {"name": "stolen", "weights_file": "../../../../etc/passwd", "sha256": ""},
        "card_bundled_name.json": {"name": BUNDLED},
        "card_string_tile.json": {"name": "string_tile", "tile_size": "512"},
        "card_not_weights.json": {"name": "not_weights", "weights_file": "not_weights.pt", "sha256": ""},
        "card_ok.json": {"name": "imported_ok"},
        "card_pickle.json": {"name": "pickled", "weights_file": "pickled.pt", "sha256": ""},
        "card_wrong_arch.json": {"name": "wrong_arch", "architecture": "unet_resnet34"},
        "card_zip.json": {"name": "zipped", "weights_file": "zipped.pt", "sha256": ""},
    }
    (folder / "not_weights.pt").write_text("hello, I am not a tensor")
    import argparse
    import zipfile

    import torch

    torch.save({"model": argparse.Namespace(layers=3)}, folder / "pickled.pt")  # code to run, not tensors
    with zipfile.ZipFile(folder / "zipped.pt", "w") as archive:  # the zip magic, but no torch archive inside
        archive.writestr("readme.txt", "not a model")
    for name, change in variants.items():
        card = {**good, "weights_file": "weights.pt", **change}
        (folder / name).write_text(json.dumps(card), encoding="utf-8")
    (folder / "card_broken.json").write_text('{"name": "broken", ', encoding="utf-8")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """inputs/ (every input, hashed), cards/ (to import), users/ (a user model folder with one bad card)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    inputs, cards, users = root / "inputs", root / "cards", root / "users"
    for folder in (inputs, cards, users):
        folder.mkdir()
    _write_rasters(inputs)
    _write_vectors(inputs)
    _write_cards(cards, REPO_ROOT / "model_zoo" / f"{BUNDLED}.pt")
    bad = json.loads((cards / "card_string_tile.json").read_text())
    (users / "hand_edited.json").write_text(json.dumps(bad))
    shutil.copy(cards / "weights.pt", users / "weights.pt")
    return root


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _snapshot(world: Path) -> dict[str, str]:
    return {str(p): _sha(p) for p in sorted(world.rglob("*")) if p.is_file()}


def _assert_clean(before: dict[str, str], world: Path, out_dir: Path) -> None:
    assert _snapshot(world) == before, "an input was changed"
    assert sorted(p.name for p in out_dir.iterdir()) == [], "files were left in the output folder"


# ---------------------------------------------------------------------------------------------
# The command line (a real subprocess: python -m footprint_plugin)

IN, OUT, CARDS = "{inputs}", "{out}", "{cards}"
CLI_CASES = [
    # Inputs are sacred
    (
        "probability_is_input",
        ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--probability", f"{IN}/in.tif"],
        2,
        "is the input",
    ),
    ("out_is_input", ["detect", f"{IN}/in.tif", "--out", f"{IN}/in.tif"], 2, "is the input"),
    (
        "out_same_as_probability",
        ["detect", f"{IN}/in.tif", "--out", f"{OUT}/x.tif", "--probability", f"{OUT}/x.tif"],
        2,
        "same file",
    ),
    ("out_raster_suffix", ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.tif"], 2, "not a vector file name"),
    (
        "probability_vector_suffix",
        ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--probability", f"{OUT}/p.gpkg"],
        2,
        "GeoTIFF",
    ),
    ("out_is_folder", ["detect", f"{IN}/in.tif", "--out", f"{OUT}"], 2, "existing folder"),
    ("out_folder_missing", ["detect", f"{IN}/in.tif", "--out", f"{OUT}/nowhere/b.gpkg"], 2, "does not exist"),
    (
        "evaluate_report_is_predictions",
        ["evaluate", f"{IN}/pred.gpkg", f"{IN}/gt.gpkg", "--report", f"{IN}/pred.gpkg"],
        2,
        "is the input",
    ),
    (
        "evaluate_layers_are_ground_truth",
        ["evaluate", f"{IN}/pred.gpkg", f"{IN}/gt.gpkg", "--out-layers", f"{IN}/gt.gpkg"],
        2,
        "is the input",
    ),
    (
        "evaluate_report_is_layers",
        ["evaluate", f"{IN}/pred.gpkg", f"{IN}/gt.gpkg", "--report", f"{OUT}/r.gpkg", "--out-layers", f"{OUT}/r.gpkg"],
        2,
        "same file",
    ),
    (
        "evaluate_report_folder_missing",
        ["evaluate", f"{IN}/pred.gpkg", f"{IN}/gt.gpkg", "--report", f"{OUT}/no/r.json"],
        2,
        "does not exist",
    ),
    # Parameters checked up front
    (
        "threshold_above_one",
        ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--threshold", "1.5"],
        2,
        "Threshold must be between 0 and 1",
    ),
    (
        "threshold_zero",
        ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--threshold", "0"],
        2,
        "Threshold must be between 0 and 1",
    ),
    ("min_area_negative", ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--min-area", "-1"], 2, "minimum area"),
    (
        "batch_size_negative",
        ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--batch-size", "-3"],
        2,
        "Batch size",
    ),
    ("batch_size_zero", ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--batch-size", "0"], 2, "Batch size"),
    ("evaluate_iou_zero", ["evaluate", f"{IN}/pred.gpkg", f"{IN}/gt.gpkg", "--iou", "0"], 2, "IoU threshold"),
    # Errors in the user's words
    ("raster_missing", ["detect", f"{IN}/nothing.tif", "--out", f"{OUT}/b.gpkg"], 2, "not found"),
    ("raster_is_folder", ["detect", f"{IN}/a_folder.tif", "--out", f"{OUT}/b.gpkg"], 2, "folder"),
    ("raster_empty_file", ["detect", f"{IN}/empty.tif", "--out", f"{OUT}/b.gpkg"], 2, "empty file"),
    ("raster_truncated", ["detect", f"{IN}/truncated.tif", "--out", f"{OUT}/b.gpkg"], 2, "re-export"),
    ("raster_corrupt", ["detect", f"{IN}/corrupt.tif", "--out", f"{OUT}/b.gpkg"], 2, "GeoTIFF"),
    ("vrt_source_missing", ["detect", f"{IN}/missing_source.vrt", "--out", f"{OUT}/b.gpkg"], 2, "gone.tif"),
    ("evaluate_broken_json", ["evaluate", f"{IN}/pred.gpkg", f"{IN}/broken.json"], 2, "broken JSON"),
    ("evaluate_utm_without_crs", ["evaluate", f"{IN}/pred.gpkg", f"{IN}/utm_nocrs.geojson"], 2, "projected"),
    ("evaluate_predictions_missing", ["evaluate", f"{IN}/nothing.gpkg", f"{IN}/gt.gpkg"], 2, "not found"),
    ("evaluate_points", ["evaluate", f"{IN}/points.geojson", f"{IN}/gt.gpkg"], 2, "has no polygons"),
    # Existing files: replaced only on request; a GeoPackage's other layers are always kept
    (
        "out_exists",
        ["detect", f"{IN}/in.tif", "--out", f"{IN}/utm_nocrs.geojson"],
        2,
        "exists already. Give --overwrite",
    ),
    ("out_layer_exists", ["detect", f"{IN}/in.tif", "--out", f"{IN}/multi.gpkg"], 2, "already has a layer 'buildings'"),
    (
        "probability_exists",
        ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--probability", f"{IN}/truncated.tif"],
        2,
        "exists already",
    ),
    (
        "evaluate_layers_exist",
        ["evaluate", f"{IN}/pred.gpkg", f"{IN}/gt.gpkg", "--out-layers", f"{IN}/multi.gpkg"],
        2,
        "already has a layer 'true_positives'",
    ),
    (
        "evaluate_report_exists",
        ["evaluate", f"{IN}/pred.gpkg", f"{IN}/gt.gpkg", "--report", f"{IN}/broken.json"],
        2,
        "exists already",
    ),
    # A bad card never breaks anything else
    ("models_lists_with_bad_card", ["models"], 0, "field 'tile_size'"),
    (
        "detect_names_bad_card",
        ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--model", "string_tile"],
        2,
        "tile_size",
    ),
    (
        "detect_unknown_model",
        ["detect", f"{IN}/in.tif", "--out", f"{OUT}/b.gpkg", "--model", "nope"],
        2,
        "Unknown model",
    ),
    # The model folder is a jail
    ("import_name_traversal", ["models", "--import", f"{CARDS}/card_traversal.json"], 2, "field 'name'"),
    ("import_name_absolute", ["models", "--import", f"{CARDS}/card_absolute.json"], 2, "field 'name'"),
    ("import_weights_outside", ["models", "--import", f"{CARDS}/card_passwd.json"], 2, "weights_file"),
    ("import_bundled_name", ["models", "--import", f"{CARDS}/card_bundled_name.json"], 2, "bundled model"),
    ("import_not_weights", ["models", "--import", f"{CARDS}/card_not_weights.json"], 2, "not a PyTorch weights file"),
    ("import_broken_card", ["models", "--import", f"{CARDS}/card_broken.json"], 2, "broken JSON"),
    ("import_pickle", ["models", "--import", f"{CARDS}/card_pickle.json"], 2, "pickled Python object"),
    ("import_wrong_shapes", ["models", "--import", f"{CARDS}/card_wrong_arch.json"], 2, "do not fit the architecture"),
    ("import_zip_not_torch", ["models", "--import", f"{CARDS}/card_zip.json"], 2, "not a PyTorch weights file"),
    ("delete_bundled", ["models", "--delete", BUNDLED], 2, "bundled"),
    (
        "train_bad_name",
        ["train", "--raster", f"{IN}/in.tif", "--labels", f"{IN}/gt.gpkg", "--out", "my,town"],
        2,
        "not allowed",
    ),
    (
        "train_bundled_name",
        ["train", "--raster", f"{IN}/in.tif", "--labels", f"{IN}/gt.gpkg", "--out", BUNDLED],
        2,
        "bundled model",
    ),
    (
        "train_bundled_name_other_folder",
        ["train", "--raster", f"{IN}/in.tif", "--labels", f"{IN}/gt.gpkg", "--out", BUNDLED, "--out-dir", f"{OUT}/m"],
        2,
        "bundled model",
    ),
    (
        "train_fails_leaves_no_folder",
        [
            "train",
            "--raster",
            f"{IN}/in.tif",
            "--labels",
            f"{IN}/nothing.gpkg",
            "--out",
            "mine",
            "--out-dir",
            f"{OUT}/a/b",
        ],
        2,
        "not found",
    ),
]


def _cli(args: list[str], users: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "FOOTPRINT_USER_MODELS": str(users), "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "footprint_plugin", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=timeout,
    )


@pytest.mark.parametrize("name,args,status,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input(world, out_dir, name, args, status, message):
    before = _snapshot(world)
    paths = {"inputs": world / "inputs", "out": out_dir, "cards": world / "cards"}
    done = _cli([a.format(**paths) for a in args], world / "users")
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text
    assert done.returncode == status, text
    assert message.lower() in text.lower(), text
    assert "weights_only" not in text, "torch's advice to load unsafely was passed on"
    _assert_clean(before, world, out_dir)


@pytest.mark.parametrize(
    "args",
    [
        ["detect", f"{IN}/nothing.tif", "--out", f"{OUT}/b.gpkg", "--json"],
        ["detect", f"{IN}/in.tif", "--json"],  # argparse: --out missing
        ["models", "--import", f"{CARDS}/card_pickle.json", "--json"],
    ],
    ids=["engine_error", "usage_error", "model_error"],
)
def test_cli_json_errors_end_with_one_json_object(world, out_dir, args):
    paths = {"inputs": world / "inputs", "out": out_dir, "cards": world / "cards"}
    done = _cli([a.format(**paths) for a in args], world / "users")
    assert "Traceback" not in done.stdout + done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["exit"] == done.returncode == 2 and last["error"], done.stdout


def _detect_until_writing(tmp_path: Path, seed: int, ignore: Optional[Path] = None) -> tuple[subprocess.Popen, Path]:
    """A CLI detect on a 1536 px raster (with TTA, so it runs a while), once its probability file is being written."""
    raster = write_geotiff(tmp_path / "big.tif", np.tile(synthetic_buildings(512, seed=seed)[0], (1, 3, 3)))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "footprint_plugin", "detect", str(raster), "--out", str(out / "b.gpkg")]
    command += ["--probability", str(out / "probability.tif"), "--tta"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".partial.tif") and p != ignore for p in out.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.stdout else ""
        time.sleep(0.1)
    return process, out


def test_cli_sigterm_cleans_up_and_a_later_run_removes_stale_partials(tmp_path):
    """SIGTERM (a killed job) cancels like Ctrl-C: status 143, nothing left in the output folder;
    a partial file of a process that died without cleaning up is removed by the next run."""
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / f".probability.{2**22 + 12345}.0123abcd.partial.tif"  # a pid no process has
    stale.write_bytes(b"left by a killed run")
    process, out = _detect_until_writing(tmp_path, seed=5, ignore=stale)
    assert not stale.exists(), "the stale partial file of a dead process was not removed"
    process.send_signal(signal.SIGTERM)
    text, _ = process.communicate(timeout=120)
    assert "Traceback" not in text, text
    assert process.returncode == 128 + signal.SIGTERM, text
    assert "SIGTERM" in text
    assert sorted(p.name for p in out.iterdir()) == []


def test_cli_failed_write_stops_at_once_with_one_message(tmp_path):
    """A disk that fills up (here: a file-size limit) stops the run at the first failed write: one message,
    no flood of GDAL lines, no inference running on, nothing left behind."""
    import resource

    raster = write_geotiff(tmp_path / "big.tif", np.tile(synthetic_buildings(512, seed=5)[0], (1, 3, 3)))
    out = tmp_path / "out"
    out.mkdir()
    limit = 200_000  # bytes: the probability raster outgrows it after a few blocks

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail with EFBIG

    before = _sha(raster)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "footprint_plugin", "detect", str(raster), "--out", str(out / "b.gpkg")]
    command += ["--probability", str(out / "p.tif"), "--float32"]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300, preexec_fn=limit_file_size
    )
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text
    assert done.returncode == 2, text
    assert text.count("Cannot write") == 1 and "stopped at once" in text, text
    assert "_tiffWriteProc" not in text and len(done.stderr.splitlines()) < 10, text
    assert sorted(p.name for p in out.iterdir()) == [] and _sha(raster) == before


# ---------------------------------------------------------------------------------------------
# The model manager's functions (the GUI's import and delete buttons call exactly these)


MANAGER_CASES = [
    ("traversal_name", "card_traversal.json", "field 'name'"),
    ("absolute_name", "card_absolute.json", "field 'name'"),
    ("weights_outside_folder", "card_passwd.json", "weights_file"),
    ("bundled_name", "card_bundled_name.json", "bundled model"),
    ("string_tile_size", "card_string_tile.json", "field 'tile_size'"),
    ("not_a_weights_file", "card_not_weights.json", "not a PyTorch weights file"),
    ("broken_json", "card_broken.json", "broken JSON"),
    ("pickled_object", "card_pickle.json", "pickled Python object"),
    ("wrong_shapes", "card_wrong_arch.json", "do not fit the architecture"),
]


@pytest.mark.parametrize("name,card_file,message", MANAGER_CASES, ids=[c[0] for c in MANAGER_CASES])
def test_model_manager_import_refuses(world, tmp_path, monkeypatch, name, card_file, message):
    from footprint_plugin.gui.model_manager import import_card_and_weights

    users = tmp_path / "users"
    users.mkdir()
    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(users))
    before = _snapshot(world)
    with pytest.raises(FootprintError) as caught:
        import_card_and_weights(world / "cards" / card_file)
    assert message.lower() in str(caught.value).lower()
    _assert_clean(before, world, users)
    assert not (tmp_path.parent / "x.json").exists() and not Path("/abs/x.json").exists()


def test_model_manager_delete_never_leaves_the_model_folder(world, tmp_path, monkeypatch):
    from footprint_plugin.core.zoo.modelcard import ModelCard
    from footprint_plugin.gui.model_manager import delete_user_model

    users = tmp_path / "users"
    users.mkdir()
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"precious")
    card_path = users / "evil.json"
    card_path.write_text("{}")
    card = ModelCard(
        name="evil",
        architecture="unet_mobilenetv2",
        in_channels=3,
        out_channels=1,
        band_roles=["r", "g", "b"],
        weights_file="../victim.pt",
        path=card_path,
    )
    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(users))
    delete_user_model(card)
    assert victim.read_bytes() == b"precious"
    assert not card_path.exists()
    with pytest.raises(ModelError, match="outside its model folder"):
        _ = card.weights_path


def test_model_manager_import_and_delete_a_good_model(world, tmp_path, monkeypatch):
    from footprint_plugin.gui.model_manager import delete_user_model, import_card_and_weights

    users = tmp_path / "users"
    monkeypatch.setenv("FOOTPRINT_USER_MODELS", str(users))
    before = _snapshot(world)
    card = import_card_and_weights(world / "cards" / "card_ok.json")
    assert sorted(p.name for p in users.iterdir()) == ["imported_ok.json", "imported_ok.pt"]
    with pytest.raises(ModelError, match="exists already"):
        import_card_and_weights(world / "cards" / "card_ok.json")
    delete_user_model(card)
    assert list(users.iterdir()) == []
    assert _snapshot(world) == before


def test_listing_skips_a_bad_card_with_a_warning_naming_file_and_field(world):
    from footprint_plugin.core.zoo.modelcard import BUNDLED_ZOO_DIR, find_model, scan_models

    cards, problems = scan_models([BUNDLED_ZOO_DIR, world / "users"])
    assert sorted(c.name for c in cards) == BUNDLED_NAMES
    assert len(problems) == 1 and "hand_edited.json" in problems[0] and "tile_size" in problems[0]
    with pytest.raises(ModelError, match="tile_size"):
        find_model("string_tile", [BUNDLED_ZOO_DIR, world / "users"])


def test_a_user_card_with_a_bundled_name_is_reported_not_silently_hidden(tmp_path):
    from footprint_plugin.core.zoo.modelcard import BUNDLED_ZOO_DIR, scan_models

    shutil.copy(BUNDLED_ZOO_DIR / f"{BUNDLED}.json", tmp_path / f"{BUNDLED}.json")
    shutil.copy(BUNDLED_ZOO_DIR / f"{BUNDLED}.pt", tmp_path / f"{BUNDLED}.pt")
    cards, problems = scan_models([BUNDLED_ZOO_DIR, tmp_path])
    assert sorted(c.name for c in cards) == BUNDLED_NAMES
    assert len(problems) == 1 and "already used by the bundled model" in problems[0]


# ---------------------------------------------------------------------------------------------
# Processing (processing.run in real QGIS)


@pytest.fixture(scope="module")
def provider(qgis_processing, world):
    from qgis.core import QgsApplication

    from footprint_plugin.processing.provider import FootprintProvider

    os.environ["FOOTPRINT_USER_MODELS"] = str(world / "users")  # with its corrupt card
    registry = QgsApplication.processingRegistry()
    provider = FootprintProvider()
    assert registry.addProvider(provider)
    yield provider
    registry.removeProvider(provider)


def test_provider_registers_with_a_corrupt_user_card(provider, world):
    """One hand-edited card ("tile_size": "512") used to abort QGIS in initAlgorithm."""
    ids = {a.id() for a in provider.algorithms()}
    assert "footprint:detectbuildings" in ids
    detect = provider.algorithm("detectbuildings")
    assert sorted(detect.parameterDefinition("MODEL").options()) == BUNDLED_NAMES


PROCESSING_CASES = [
    ("probability_is_input", "footprint:detectbuildings", {"PROBABILITY": "{inputs}/in.tif"}, "is the input"),
    ("output_is_input", "footprint:detectbuildings", {"OUTPUT": "{inputs}/in.tif"}, "is the input"),
    (
        "output_is_probability",
        "footprint:detectbuildings",
        {"OUTPUT": "{out}/x.tif", "PROBABILITY": "{out}/x.tif"},
        "same file",
    ),
    ("threshold_one", "footprint:detectbuildings", {"THRESHOLD": 1.0}, "Threshold must be between 0 and 1"),
    ("truncated_raster", "footprint:detectbuildings", {"INPUT": "{inputs}/truncated.tif"}, "re-export"),
    ("vrt_source_missing", "footprint:detectbuildings", {"INPUT": "{inputs}/missing_source.vrt"}, "VRT"),
    ("report_is_predictions", "footprint:evaluatefootprints", {"REPORT": "{inputs}/pred.gpkg"}, "is the input"),
    ("tp_layer_is_reference", "footprint:evaluatefootprints", {"TRUE_POSITIVES": "{inputs}/gt.gpkg"}, "is the input"),
    (
        "postgis_unreachable",
        "footprint:detectbuildings",
        {
            "OUTPUT": "postgres:dbname='gis' host=127.0.0.1 port=9 user='me' password='s3cret' table=\"public\".\"b\" (geom)"
        },
        "cannot connect to the PostGIS database 127.0.0.1:9/gis",
    ),
]


def _processing_defaults(algorithm: str, paths: dict) -> dict:
    if algorithm == "footprint:detectbuildings":
        return {
            "INPUT": f"{paths['inputs']}/in.tif",
            "MODEL": BUNDLED,
            "DEVICE": "cpu",
            "OUTPUT": f"{paths['out']}/b.gpkg",
        }
    return {
        "PREDICTED": f"{paths['inputs']}/pred.gpkg",
        "REFERENCE": f"{paths['inputs']}/gt.gpkg",
        "TRUE_POSITIVES": f"{paths['out']}/tp.gpkg",
        "FALSE_POSITIVES": f"{paths['out']}/fp.gpkg",
        "FALSE_NEGATIVES": f"{paths['out']}/fn.gpkg",
    }


@pytest.mark.parametrize("name,algorithm,changes,message", PROCESSING_CASES, ids=[c[0] for c in PROCESSING_CASES])
def test_processing_refuses_bad_input(provider, world, out_dir, name, algorithm, changes, message):
    import processing
    from qgis.core import QgsProcessingException

    paths = {"inputs": world / "inputs", "out": out_dir}
    parameters = _processing_defaults(algorithm, paths)
    parameters.update({k: v.format(**paths) if isinstance(v, str) else v for k, v in changes.items()})
    before = _snapshot(world)
    with pytest.raises(QgsProcessingException) as caught:
        processing.run(algorithm, parameters)
    text = str(caught.value)
    assert "Traceback" not in text
    assert message.lower() in text.lower(), text
    assert "s3cret" not in text, "a password in a message"
    _assert_clean(before, world, out_dir)


def test_gdal_read_failure_names_the_file_for_training_too(world):
    """Training reads through raster_io.read_block, so a truncated raster is an InputError naming it."""
    from footprint_plugin.core.common.errors import InputError
    from footprint_plugin.core.io import raster_io

    with pytest.raises(InputError, match="truncated.tif"):
        with raster_io.opened(world / "inputs" / "truncated.tif") as dataset:
            raster_io.read_block(dataset, [1, 2, 3])


def test_geopackage_raster_and_vsizip_layers_are_read(world, tmp_path):
    import zipfile

    from footprint_plugin.core.io import raster_io
    from footprint_plugin.core.io.vector_io import read_polygons

    gpkg = tmp_path / "raster.gpkg"
    import rasterio

    with rasterio.open(world / "inputs" / "in.tif") as src:
        profile = {**src.profile, "driver": "GPKG"}
        for key in ("blockxsize", "blockysize", "tiled", "interleave", "compress"):
            profile.pop(key, None)
        with rasterio.open(gpkg, "w", **profile) as dst:
            dst.write(src.read())
    info = raster_io.describe_raster(f"GPKG:{gpkg}:raster")
    assert (info.width, info.height) == (256, 256)
    from footprint_plugin.core.io.vector_io import write_polygons

    labels = read_polygons(world / "inputs" / "gt.gpkg")
    write_polygons(tmp_path / "gt.shp", labels.geometries, labels.attributes, labels.crs_wkt)
    archive = tmp_path / "labels.zip"
    with zipfile.ZipFile(archive, "w") as handle:  # a zipped Shapefile, as downloads come
        for part in tmp_path.glob("gt.*"):
            handle.write(part, part.name)
    assert len(read_polygons(f"/vsizip/{archive}/gt.shp").geometries) == 4


def test_crs_without_geotransform_is_said_not_silently_metres(tmp_path):
    from footprint_plugin.core.engine.inference import InferenceOptions, plan_grid
    from footprint_plugin.core.io import raster_io
    from footprint_plugin.core.zoo.modelcard import load_card

    path = write_geotiff(tmp_path / "nogeo.tif", synthetic_buildings(64)[0], transform=from_origin(0, 0, 1, -1))
    card = load_card(REPO_ROOT / "model_zoo" / f"{BUNDLED}.json")
    with raster_io.opened(path) as dataset:
        plan = plan_grid(dataset, card, InferenceOptions())
    assert plan.gsd is None and any("no georeferencing" in n for n in plan.notes)


def test_cli_second_ctrl_c_aborts_without_a_traceback(tmp_path):
    process, out = _detect_until_writing(tmp_path, seed=7)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    text, _ = process.communicate(timeout=120)
    assert "Traceback" not in text, text
    assert process.returncode == 130, text
    assert sorted(p.name for p in out.iterdir()) == []
