"""Training report: loss and metric curves per epoch (PNG) and the full JSON log, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .atomic import write_atomically, write_text_atomically


def write_training_log(data: dict[str, Any], path: Path) -> Path:
    """The JSON log (settings, card, per-epoch history)."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return write_text_atomically(path, text)


def write_training_report(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Two panels: training loss (and learning rate), then validation object F1 / precision / recall / pixel IoU."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(10, 4.2), dpi=100)
    loss_axes, metric_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [h.get("train_loss") for h in history], "o-", color="tab:blue", ms=3, label="training loss")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss (BCE/focal + Dice)")
    loss_axes.grid(alpha=0.3)
    lr_axes = loss_axes.twinx()
    lr_axes.plot(epochs, [h.get("lr") for h in history], "-", color="tab:gray", alpha=0.6, label="learning rate")
    lr_axes.set_ylabel("learning rate (end of epoch)", color="tab:gray")
    frozen = [h["epoch"] for h in history if h.get("encoder_frozen")]
    if frozen:
        loss_axes.axvspan(min(frozen) - 0.5, max(frozen) + 0.5, color="tab:orange", alpha=0.12, label="encoder frozen")
    loss_axes.legend(loc="upper right", fontsize=8)
    if any("val_f1" in h for h in history):
        for key, style, label in (
            ("val_f1", "o-", "object F1 @ IoU 0.5"),
            ("val_precision", "--", "precision"),
            ("val_recall", ":", "recall"),
            ("val_pixel_iou", "s-", "pixel IoU"),
        ):
            metric_axes.plot(epochs, [h.get(key) for h in history], style, ms=3, label=label)
        best = max(history, key=lambda h: h.get("val_f1", -1))
        metric_axes.axvline(best["epoch"], color="black", alpha=0.35)
        late = best["epoch"] > (min(epochs) + max(epochs)) / 2
        metric_axes.annotate(
            f"best F1 {best['val_f1']:.3f}\n(epoch {best['epoch']})", (best["epoch"], best["val_f1"]),
            textcoords="offset points", xytext=(-70 if late else 6, 10), fontsize=8, color="black",
        )
        metric_axes.set_ylim(0, 1)
        metric_axes.legend(loc="upper left", fontsize=8)
    else:
        metric_axes.text(0.5, 0.5, "no validation area", ha="center", va="center", transform=metric_axes.transAxes)
    metric_axes.set_xlabel("epoch")
    metric_axes.set_ylabel("validation score")
    metric_axes.grid(alpha=0.3)
    figure.suptitle(title or "Training report")
    figure.tight_layout()
    return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png"))
