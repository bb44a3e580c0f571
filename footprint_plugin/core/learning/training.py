"""Train or fine-tune a building-footprint model from (raster, polygon layer) pairs: the public entry point.

The result is a new model in the user model folder (weights + card), a training report PNG and
a JSON log. Validation each epoch runs the real post-processing (polygons) and scores object F1
at IoU 0.5, so the checkpoint kept is the one that draws the best buildings, not the best pixels.

The run itself lives in rooms of its own: config (settings and checks), cards (the new card and
its provenance), dataset (rasters, split), steps (loss, optimizer step), schedule (one cycle, time
budget), validation (tiled prediction, scores), checkpoint, fitting (the epoch loop), finishing
(calibration, outputs) and trainer (the stages in order). This module names what callers use.
"""

from __future__ import annotations

from .config import ENCODER_WEIGHTS, LogCallback, TrainingConfig, TrainingPair, TrainingResult, uses_imagenet
from .schedule import one_cycle_lr
from .steps import HEAD_LOSS_WEIGHTS, TrainingStep, WeightAverage, compute_loss, training_amp_dtype
from .steps import select_device as _select_device
from .trainer import Trainer, train_model
from .validation import THRESHOLD_CANDIDATES, evaluate_rasters, predict_array

__all__ = [
    "ENCODER_WEIGHTS",
    "HEAD_LOSS_WEIGHTS",
    "THRESHOLD_CANDIDATES",
    "LogCallback",
    "Trainer",
    "TrainingConfig",
    "TrainingPair",
    "TrainingResult",
    "TrainingStep",
    "WeightAverage",
    "_select_device",
    "compute_loss",
    "evaluate_rasters",
    "one_cycle_lr",
    "predict_array",
    "train_model",
    "training_amp_dtype",
    "uses_imagenet",
]
