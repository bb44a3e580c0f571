"""PNG reports, written atomically: training curves plus the JSON log, and quicklooks of polygons over a raster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..io.atomic import write_atomically, write_text_atomically


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
            f"best F1 {best['val_f1']:.3f}\n(epoch {best['epoch']})",
            (best["epoch"], best["val_f1"]),
            textcoords="offset points",
            xytext=(-70 if late else 6, 10),
            fontsize=8,
            color="black",
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


def write_quicklook(
    raster: Path | str,
    layers: Sequence[tuple[Path | str, dict[str, Any]]],
    path: Path | str,
    title: str = "",
    width_inches: float = 9.0,
) -> Path:
    """The raster (2-98 % stretch) with polygon layers drawn over it, each with its matplotlib line style.

    layers: (vector file, style) pairs, e.g. (labels, {"color": "cyan"}); they are reprojected to the raster.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg", force=False)
    # Debian's python3-matplotlib (pulled in by QGIS) leaves an mpl_toolkits beside ours; 3D is not used here.
    warnings.filterwarnings("ignore", message="Unable to import Axes3D")
    import numpy as np
    import rasterio
    from matplotlib.figure import Figure

    from ..io.vector_io import read_polygons

    with rasterio.open(raster) as dataset:
        bands = dataset.read([1, 2, 3] if dataset.count >= 3 else [1, 1, 1]).astype(np.float32)
        valid = dataset.read_masks(1) > 0
        crs_wkt, inverse = dataset.crs.to_wkt(), ~dataset.transform
    low, high = np.percentile(bands[:, valid], [2, 98]) if valid.any() else (0.0, 1.0)
    image = np.clip((bands.transpose(1, 2, 0) - low) / max(float(high - low), 1e-6), 0, 1)
    image[~valid] = 0.0
    rows, cols = image.shape[:2]
    title_inches = 0.15 + 0.22 * (title.count("\n") + 1) if title else 0.0
    figure = Figure(figsize=(width_inches, width_inches * rows / cols + title_inches), dpi=100)
    axes = figure.add_axes((0, 0, 1, 1 - title_inches / figure.get_figheight()))
    axes.imshow(image, interpolation="nearest")
    for source, style in layers:
        for geometry in read_polygons(source, crs_wkt).geometries:
            for polygon in getattr(geometry, "geoms", [geometry]):
                xy = np.array([inverse * point for point in polygon.exterior.coords])
                axes.plot(xy[:, 0], xy[:, 1], **{"lw": 1.2, **style})
    axes.set_xlim(-0.5, cols - 0.5)
    axes.set_ylim(rows - 0.5, -0.5)
    axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10, y=1.0 - 0.05 / figure.get_figheight(), va="top")
    return write_atomically(Path(path), lambda tmp: figure.savefig(tmp, format="png"))
