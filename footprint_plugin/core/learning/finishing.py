"""The Trainer's last stages: calibrate the threshold, score, fill the card (with provenance), write outputs.

Outputs are the model (weights + card) in the model folder and, in its training_reports/ folder,
a report PNG and a JSON log named after the model (deleting the model removes them too).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from ..common.callbacks import CancelCallback
from ..common.errors import OutputError
from ..zoo.modelcard import ModelCard, training_reports_dir
from .augment import AugmentOptions
from .cards import add_fine_tune_provenance
from .checkpoint import TrainingState
from .chips import PreparedRaster
from .config import LogCallback, TrainingConfig, TrainingPair, TrainingResult
from .steps import TrainingStep
from .validation import calibrate_threshold, summarise


class Finishing:
    """Stages after fit(); the Trainer's configure stages and fit() set the attributes read here."""

    config: TrainingConfig
    pairs: list[TrainingPair]
    base: Optional[ModelCard]
    card: ModelCard
    rasters: list[PreparedRaster]
    n_fixed: int
    n_cells: int
    augment_options: AugmentOptions
    has_validation: bool
    device: torch.device
    model: torch.nn.Module
    step_once: TrainingStep
    state: TrainingState
    out_dir: Path
    checkpoint_path: Path
    is_canceled: Optional[CancelCallback]
    log: LogCallback
    budget: Any  # schedule.TimeBudget
    elapsed: Any  # EpochLoop.elapsed

    def calibrate(self) -> dict[str, float]:
        """Set the card's threshold to the candidate with the best validation F1; returns F1 by candidate."""
        if not (self.config.calibrate_threshold and self.has_validation):
            return {}
        best, search = calibrate_threshold(self.model, self.rasters, self.card, self.device, self.is_canceled)
        self.log(f"Threshold {best:g} gives the best validation F1 ({search[f'{best:g}']:.3f}).")
        self.card.threshold = best
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
            metrics["validation"] = summarise(per_area, "val")
        if any(e["split"] == "test" for e in per_area.values()):
            metrics["test"] = summarise(per_area, "test")
        if not self.has_validation:
            metrics["validation_method"] = "none: no held-out block holds a labelled building (the last epoch is kept)"
        elif config.val_areas:
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
            "budget_minutes": round(self.budget.budget_s / 60.0, 2) if self.budget.budget_s else None,
            "device": self.device.type,
        }

    def record_provenance(self) -> None:
        """A fine-tuned card says whose polygons it learned from, within which budget, and how well it validated."""
        if self.base is None:
            return
        validation = self.card.metrics.get("validation") if self.has_validation else None
        labels = {str(p.labels) for p in self.pairs}
        source = self.config.labels_source or ", ".join(sorted(Path(p).name for p in labels))
        add_fine_tune_provenance(
            self.card,
            self.base,
            source,
            n_buildings=sum(r.n_labels_in_raster for r in self.rasters),
            n_cells=self.n_cells,
            budget_minutes=round(self.budget.budget_s / 60.0, 2) if self.budget.budget_s else None,
            validation_f1=validation["f1"] if validation else None,
        )

    def write_outputs(self) -> TrainingResult:
        """The model and card, the report PNG and JSON log; then the checkpoint goes."""
        from ..zoo.weights import save_model
        from .report import write_training_log, write_training_report

        config, card, history = self.config, self.card, self.state.history
        card_path = Path(save_model(self.model.cpu(), card, self.out_dir))
        weights_path = card_path.parent / card.weights_file
        reports_dir = training_reports_dir(self.out_dir)
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
        result = TrainingResult(card_path, weights_path, card.metrics, report_png, log_json, self.state.best_epoch)
        result.summary = result_summary(card, self.state, self.elapsed(), self.has_validation)
        return result


def result_summary(card: ModelCard, state: TrainingState, seconds: float, has_validation: bool) -> str:
    """A few readable lines about the finished run, for the dialog, Processing's log and the CLI."""
    metrics = card.metrics
    minutes, rest = divmod(int(round(seconds)), 60)
    lines = [
        f"Model {card.name}: {len(state.history)} epochs in {minutes} min {rest:02d} s "
        f"(stopped by {metrics.get('stop_reason', '?')}); best epoch {state.best_epoch}."
    ]
    validation = metrics.get("validation")
    if has_validation and validation:
        lines.append(
            f"Validation F1 {validation['f1']:.2f} (precision {validation['precision']:.2f}, recall "
            f"{validation['recall']:.2f}; {validation['tp'] + validation['fn']} buildings held out), "
            f"threshold {card.threshold:g}."
        )
    else:
        lines.append(
            "Validation was impossible: no held-out block holds a labelled building. Label more buildings "
            "(or cells spread over the area) to get a score; the last epoch was kept."
        )
    test = metrics.get("test")
    if test:
        lines.append(f"Test F1 {test['f1']:.2f} on {test['tp'] + test['fn']} buildings never trained on.")
    fine_tune = card.extra.get("fine_tune")
    if isinstance(fine_tune, dict):
        lines.append(f"Fine-tuned from {fine_tune['base_model']} on {fine_tune['labels']}.")
    losses = [r["train_loss"] for r in state.history if r.get("train_loss") is not None]
    if len(losses) >= 2:
        lines.append(f"Training loss {losses[0]:.3f} -> {losses[-1]:.3f}.")
    return "\n".join(lines)
