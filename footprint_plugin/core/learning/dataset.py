"""A run's data: the output folder checked, every raster prepared at the model's GSD, areas split.

Validation is a spatial block (or whole areas) that holds labels; when none holds any, the run says
so instead of reporting a meaningless F1 of 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled
from ..common.errors import InputError, OutputError
from ..zoo.modelcard import ModelCard, user_model_dir
from .chips import PreparedRaster, assign_spatial_blocks, prepare_raster
from .config import LogCallback, TrainingConfig, TrainingPair


def split_areas(rasters: list[PreparedRaster], config: TrainingConfig, log: LogCallback) -> None:
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


def output_folder(config: TrainingConfig) -> Path:
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


def prepare_rasters(
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


def count_cells(pairs: Sequence[TrainingPair], crs_wkt: Optional[str]) -> int:
    """How many reviewed cells (area-of-interest polygons) the run's AOI layers hold, each layer counted once."""
    from .labels import load_aoi

    return sum(len(load_aoi(path, crs_wkt)) for path in {p.aoi.resolve() for p in pairs if p.aoi is not None})


def has_labelled_validation(rasters: Sequence[PreparedRaster], log: LogCallback) -> bool:
    """Whether some validation pixels hold a labelled building; says so when validation is impossible.

    A held-out block of empty ground would score every epoch F1 0 and pick an arbitrary one.
    """
    blocks = [(r, r.eval_mask()) for r in rasters if r.role != "test"]
    blocks = [(r, mask) for r, mask in blocks if mask is not None]
    if not blocks:
        log(
            "Warning: validation is impossible (the labelled area is too small to hold a block out); the last epoch is kept."
        )
        return False
    if any((r.targets[0][mask] > 0).any() for r, mask in blocks):
        return True
    names = ", ".join(sorted({r.name for r, _mask in blocks}))
    log(
        f"Warning: validation is impossible: the held-out block of {names} holds no labelled building. "
        "The last epoch is kept; label buildings across more of the area for a validation score."
    )
    return False
