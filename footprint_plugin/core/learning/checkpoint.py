"""Checkpoints: an interrupted run with the same settings resumes where it stopped.

The signature covers every setting that changes what is learned; settings that only bound the run
(epochs, time budget, patience) or only reach the card do not invalidate a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from .config import LogCallback, TrainingConfig, TrainingPair


def run_signature(config: TrainingConfig, pairs: Sequence[TrainingPair]) -> str:
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
        "labels_source",
    }
    settings = {k: v for k, v in asdict(config).items() if k not in ignored}
    settings["pairs"] = [
        [str(p.raster.resolve()), str(p.labels.resolve()), str(p.aoi.resolve()) if p.aoi else "", p.name] for p in pairs
    ]
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_path(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}.checkpoint.pt"


def read_checkpoint(path: Path, device: torch.device, signature: str, log: LogCallback) -> Optional[dict[str, Any]]:
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


class Checkpointing:
    """The Trainer's checkpoint stage: save after every epoch, resume an interrupted run with the same settings."""

    config: TrainingConfig
    pairs: list[TrainingPair]
    out_dir: Path
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    average: Any
    state: TrainingState
    log: LogCallback
    signature: str
    checkpoint_path: Path
    elapsed: Callable[[], float]  # EpochLoop.elapsed

    def resume(self) -> None:
        """Continue from the checkpoint of an interrupted run with the same settings, if there is one."""
        self.signature = run_signature(self.config, self.pairs)
        self.checkpoint_path = checkpoint_path(self.out_dir, self.config.out_name)
        if not self.config.resume:
            return
        saved = read_checkpoint(self.checkpoint_path, self.device, self.signature, self.log)
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
        from ..io.atomic import save_torch_atomically

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
