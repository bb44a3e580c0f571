"""The Trainer's epoch loop: optimizer steps over random chips, validation, the best weights kept,
until the epochs, the time budget or the patience run out.

Progress lines carry epoch, loss, validation F1 and the time left, so every front end (CLI, the
Processing log, the dialog) can show them as they come.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled, sub_progress
from ..common.errors import CanceledError, ModelError
from ..zoo.modelcard import ModelCard
from .augment import AugmentOptions, augment_chip, resize_chip
from .checkpoint import TrainingState
from .chips import ChipSampler, PreparedRaster
from .config import LogCallback, TrainingConfig
from .schedule import BUDGET_EPOCH_CAP, TimeBudget, one_cycle_lr
from .steps import TrainingStep, WeightAverage
from .validation import evaluate_rasters, summarise

DEFAULT_PATIENCE = 8


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class EpochLoop:
    """fit() and its parts; the Trainer's configure stages set the attributes read here."""

    config: TrainingConfig
    card: ModelCard
    heads: list[str]
    rasters: list[PreparedRaster]
    sampler: ChipSampler
    chips_per_epoch: int
    batches_per_epoch: int
    augment_options: AugmentOptions
    has_validation: bool
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_once: TrainingStep
    average: Optional[WeightAverage]
    state: TrainingState
    progress: ProgressCallback
    is_canceled: Optional[CancelCallback]
    log: LogCallback
    started: float
    budget: TimeBudget
    train_progress: ProgressCallback
    save_checkpoint: Any  # Checkpointing.save_checkpoint

    # -- limits ------------------------------------------------------------------------------

    @property
    def epoch_cap(self) -> int:
        return self.config.epochs if self.config.epochs is not None else BUDGET_EPOCH_CAP

    @property
    def fills_budget(self) -> bool:
        """No epoch count: the run lasts as long as its time budget."""
        return self.config.epochs is None and self.budget.budget_s is not None

    @property
    def patience(self) -> Optional[int]:
        if self.config.patience is not None:
            return self.config.patience
        return None if self.fills_budget else DEFAULT_PATIENCE

    def planned_epochs(self) -> int:
        done = len(self.state.history)
        return self.budget.planned_epochs(done, self.elapsed(), self.epoch_cap)

    def elapsed(self, now: Optional[float] = None) -> float:
        """Seconds since the run started, including those before a resume."""
        return self.state.elapsed_before + ((time.monotonic() if now is None else now) - self.started)

    def _position(self, step_fraction: float) -> float:
        """The run's position: the larger of the step fraction and the share of the time budget used."""
        return max(step_fraction, self.budget.fraction_used(self.elapsed()))

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> None:
        """Train epoch by epoch until the epochs, the time budget or the patience run out."""
        state = self.state
        self.budget.fit_started_s = self.elapsed()
        self.train_progress = sub_progress(self.progress, 0.08, 0.92)
        self.log_start()
        epoch = state.start_epoch
        while epoch < self.epoch_cap:
            if not self.budget.room_for_another_epoch(self.elapsed()):
                state.stop_reason = "time budget"
                break
            epoch_started = time.monotonic()
            record = self.train_epoch(epoch, epoch_started)
            validation_started = time.monotonic()
            improved = self.validate(epoch, record, epoch_started)
            self.budget.record_epoch(record["seconds"], time.monotonic() - validation_started)
            self.log_epoch(record, improved)
            self.save_checkpoint(epoch + 1)
            epoch += 1
            if self.should_stop_early():
                state.stop_reason = f"early stopping (no gain for {self.patience} epochs)"
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
        if self.fills_budget:
            length = f"for {_duration(self.budget.budget_s or 0)} (epochs from measured epoch times)"
        elif self.budget.budget_s is not None:
            length = f"up to {self.epoch_cap} epochs within {_duration(self.budget.budget_s)}"
        else:
            length = f"up to {self.epoch_cap} epochs"
        self.log(
            f"Training {self.card.architecture} ({parameters:.1f} M parameters) on {self.device.type}{precision_note}: "
            f"{self.chips_per_epoch} chips of {self.config.chip_size} px per epoch, {length}."
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
        planned = self.planned_epochs()
        losses = []
        for batch_index in range(self.batches_per_epoch):
            check_canceled(self.is_canceled)
            batch = windows[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            if not batch:
                break
            losses.append(self.training_step(epoch, batch_index, batch, rng, planned))
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

    def set_learning_rate(self, step: int, planned_epochs: int) -> None:
        """One-cycle rates at the run's position (steps of the planned epochs, or time-budget share)."""
        position = self._position(step / (planned_epochs * self.batches_per_epoch))
        for group in self.optimizer.param_groups:
            group["lr"] = one_cycle_lr(self.config.lr * group.get("lr_factor", 1.0), position)

    def training_step(
        self, epoch: int, batch_index: int, batch: Sequence[Any], rng: np.random.Generator, planned_epochs: int
    ) -> float:
        x, y, w = self.batch_tensors(batch, rng)
        self.set_learning_rate(epoch * self.batches_per_epoch + batch_index, planned_epochs)
        loss = self.step_once(x, y, w, self.heads, self.config.loss)
        if self.average is not None:
            self.average.update(self.model)
        start_epoch = self.state.start_epoch
        done = (epoch - start_epoch) * self.batches_per_epoch + batch_index + 1
        total = max(1, (planned_epochs - start_epoch) * self.batches_per_epoch)
        self.train_progress(min(1.0, self._position(done / total)))
        return float(loss)

    def validation_score(self, record: dict[str, Any]) -> float:
        """Validation F1 (real post-processing, IoU 0.5) into the record; returns the selection score."""
        per_area = evaluate_rasters(
            self.model, self.rasters, self.card, self.device, roles=("val",), is_canceled=self.is_canceled
        )
        summary = summarise(per_area, "val")
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
        """One line per epoch: epoch of planned, loss, validation F1, time per epoch and time left."""
        scores = (
            f", val F1 {record['val_f1']:.3f}, pixel IoU {record['val_pixel_iou']:.3f}" if self.has_validation else ""
        )
        best = " (best)" if improved else ""
        planned = self.planned_epochs()
        epoch_s = self.budget.typical_epoch() or record["seconds"]
        left = max(0.0, planned - record["epoch"]) * epoch_s + self.budget.finish_estimate()
        if self.budget.budget_s is not None:
            left = min(left, max(0.0, self.budget.budget_s - self.elapsed()))
        self.log(
            f"epoch {record['epoch']}/{planned}: loss {record['train_loss']}{scores}{best}, "
            f"{record['seconds']:.0f} s, ETA {_duration(left)}"
        )

    def should_stop_early(self) -> bool:
        patience = self.patience
        return self.has_validation and patience is not None and self.state.epochs_without_gain >= patience
