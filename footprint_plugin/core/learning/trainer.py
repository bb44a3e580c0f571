"""One training run in stages, like torchgeo's trainers.

Trainer.run() calls: check the settings, configure the card, data, model and optimizer, resume a
checkpoint (checkpoint.Checkpointing), fit (fitting.EpochLoop: epochs, validation, early stopping,
the time budget), calibrate the threshold and write the outputs (finishing.Finishing). Each stage
sets the attributes the next ones read.
"""

from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import torch

from ..common.callbacks import CancelCallback, ProgressCallback, sub_progress
from ..common.vocabulary import PRETRAINED_WHEELS, default_budget_minutes
from ..zoo.modelcard import find_model
from .augment import AugmentOptions
from .cards import build_card
from .checkpoint import Checkpointing, TrainingState
from .chips import ChipSampler
from .config import LogCallback, TrainingConfig, TrainingPair, TrainingResult, check_config, uses_imagenet
from .dataset import count_cells, has_labelled_validation, output_folder, prepare_rasters, split_areas
from .finishing import Finishing
from .fitting import EpochLoop
from .schedule import TimeBudget
from .steps import TrainingStep, WeightAverage, parameter_groups, select_device
from .validation import evaluate_rasters


class Trainer(Checkpointing, EpochLoop, Finishing):
    """A training or fine-tuning run: construct with pairs and a config, then run()."""

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
        self.budget = TimeBudget(None)
        self.n_cells = 0

    def run(self) -> TrainingResult:
        check_config(self.config, self.pairs)
        self.imagenet = uses_imagenet(self.config)
        self.out_dir = output_folder(self.config)
        self.configure_card()
        torch.manual_seed(self.config.seed)
        self.started = time.monotonic()
        self.configure_model()  # first: the device decides the default time budget
        self.configure_data()
        self.configure_optimizer()
        self.resume()
        self.fit()
        assert self.state.best_state is not None  # fit() raises CanceledError otherwise
        self.model.load_state_dict(self.state.best_state)
        finish_progress = sub_progress(self.progress, 0.92, 1.0)
        threshold_search = self.calibrate()
        finish_progress(0.3)
        per_area = evaluate_rasters(self.model, self.rasters, self.card, self.device, ("val", "test"), self.is_canceled)
        finish_progress(0.5)
        self.card.metrics = self.final_metrics(per_area, threshold_search)
        self.card.extra["training"] = self.training_summary()
        self.record_provenance()
        result = self.write_outputs()
        finish_progress(1.0)
        return result

    # -- configuration ---------------------------------------------------------------------

    def configure_card(self) -> None:
        config = self.config
        self.base = find_model(config.base_model) if config.base_model else None
        self.card = build_card(config, self.pairs, self.base)
        if self.base is None:
            self.card.extra["encoder_init"] = "ImageNet" if self.imagenet else "random"
        self.heads = list(self.card.heads)

    def configure_budget(self) -> None:
        """The time budget: the one asked for, else (no epoch count) the device's default."""
        minutes = self.config.max_minutes
        if minutes is None and self.config.epochs is None:
            minutes = default_budget_minutes(self.device.type)
        self.budget = TimeBudget(minutes * 60.0 if minutes else None)

    def configure_data(self) -> None:
        """Prepare the rasters, split the areas, set up the chip sampler and augmentation."""
        config = self.config
        prepare_progress = sub_progress(self.progress, 0.0, 0.08)
        self.rasters, self.n_fixed = prepare_rasters(
            self.pairs, self.card, config.boundary_width_m, self.is_canceled, prepare_progress, self.log
        )
        self.n_cells = count_cells(self.pairs, self.rasters[0].crs_wkt)
        split_areas(self.rasters, config, self.log)
        training = [r for r in self.rasters if r.role == "train"]
        self.sampler = ChipSampler(training, config.chip_size, config.empty_chip_ratio)
        self.chips_per_epoch = config.chips_per_epoch or self.sampler.auto_chips_per_epoch(config.batch_size)
        self.batches_per_epoch = max(1, math.ceil(self.chips_per_epoch / config.batch_size))
        self.augment_options = AugmentOptions.for_policy(self.card.sensor, config.augmentation)
        if config.scale_jitter is not None and self.card.sensor != "SAR":
            self.augment_options.scale_jitter = config.scale_jitter
        self.has_validation = has_labelled_validation(self.rasters, self.log)

    def configure_model(self) -> None:
        """The base model to fine-tune, or a new one (from ImageNet weights where uses_imagenet says so)."""
        config = self.config
        self.device = select_device(config.device)
        self.configure_budget()
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
        groups = parameter_groups(self.model, config, self.imagenet)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.step_once = TrainingStep(self.model, self.optimizer, self.device, config.precision, config.edge_weight)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay > 0 else None


def train_model(
    pairs: list[TrainingPair],
    config: TrainingConfig,
    progress: Optional[ProgressCallback] = None,
    is_canceled: Optional[CancelCallback] = None,
    log: Optional[LogCallback] = None,
) -> TrainingResult:
    """Train (or fine-tune) a model; write weights + card + report into config.out_dir."""
    return Trainer(pairs, config, progress, is_canceled, log).run()
