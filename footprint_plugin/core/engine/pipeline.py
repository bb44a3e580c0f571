"""Detect buildings end to end: probability raster, then polygons, then the vector file.

Shared by the command line and the Processing algorithms, so every entry point behaves the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled, sub_progress
from ..common.errors import InputError, OutputError
from ..io.atomic import remove_quietly, remove_stale_partials, temporary_sibling
from ..zoo.modelcard import ModelCard, find_model


@dataclass
class DetectResult:
    """What one detection produced, with the figures a user wants to see."""

    buildings_path: Optional[Path]
    probability_path: Optional[Path]
    n_buildings: int
    geometries: list[Any]
    attributes: list[dict[str, Any]]
    crs_wkt: Optional[str]
    device: str
    device_name: str
    device_note: str
    precision: str
    seconds: float
    inference_seconds: float
    polygon_seconds: float
    megapixels: float
    model: str
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # inference stages, seconds (InferenceResult.timings)

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        lines = [
            f"Buildings found: {self.n_buildings}",
            f"Time: {self.seconds:.1f} s ({self.mp_per_s:.2f} MP/s over {self.megapixels:.2f} MP)",
            f"Device: {self.device_name} ({self.device}, {self.precision})"
            + (f" - {self.device_note}" if self.device_note else ""),
            f"Model: {self.model}",
        ]
        return lines + [f"Warning: {w}" for w in self.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "buildings_path": str(self.buildings_path) if self.buildings_path else None,
            "probability_path": str(self.probability_path) if self.probability_path else None,
            "n_buildings": self.n_buildings,
            "device": self.device,
            "device_name": self.device_name,
            "device_note": self.device_note,
            "precision": self.precision,
            "seconds": round(self.seconds, 3),
            "inference_seconds": round(self.inference_seconds, 3),
            "polygon_seconds": round(self.polygon_seconds, 3),
            "megapixels": round(self.megapixels, 3),
            "mp_per_s": round(self.mp_per_s, 3),
            "model": self.model,
            "warnings": self.warnings,
        }


RASTER_SUFFIXES = (".tif", ".tiff")


def check_detect_job(
    raster_path: Union[str, Path],
    out_vector: Optional[Union[str, Path]],
    probability_path: Optional[Union[str, Path]],
    inference_options: Any,
    polygon_options: Any,
    labels: Optional[dict[str, str]] = None,
) -> None:
    """Every check that needs no model and no pixels, before any work: parameters, output paths
    (never an input, never each other, never a folder), output folders writable.

    `labels` names the settings in the caller's words (e.g. {"vector": "--out"}).
    """
    from ..io.paths import check_folder_writable, check_outputs
    from ..io.vector_io import DRIVERS_BY_SUFFIX
    from .options import check_batch_size

    labels = {
        "raster": "input raster",
        "vector": "the buildings output",
        "probability": "the probability output",
        **(labels or {}),
    }
    check_batch_size(getattr(inference_options, "batch_size", None))
    if polygon_options is not None:
        polygon_options.validate()
    check_outputs(
        {labels["raster"]: raster_path}, {labels["vector"]: out_vector, labels["probability"]: probability_path}
    )
    if out_vector is not None and Path(out_vector).suffix.lower() not in DRIVERS_BY_SUFFIX:
        known = ", ".join(sorted(DRIVERS_BY_SUFFIX))
        raise OutputError(f"{labels['vector']}: {Path(out_vector).name} is not a vector file name; use one of {known}.")
    if probability_path is not None and Path(probability_path).suffix.lower() not in RASTER_SUFFIXES:
        raise OutputError(
            f"{labels['probability']}: the probability raster must be a GeoTIFF (.tif), not {Path(probability_path).name}."
        )
    for key, path in (("vector", out_vector), ("probability", probability_path)):
        if path is not None:
            check_folder_writable(path, labels[key])


def check_sensor(raster_path: Union[str, Path], card: ModelCard) -> None:
    """Refuse an EO model on a raster that looks like SAR (it finds "buildings" on speckle), saying how to get a SAR model."""
    from ..io.sensor import raster_sar_reason, sar_refusal
    from ..zoo.modelcard import list_models

    if card.sensor != "EO":
        return
    reason = raster_sar_reason(raster_path)
    if reason:
        sar_models = [c.name for c in list_models() if c.sensor == "SAR"]
        raise InputError(sar_refusal(Path(raster_path).name, reason, card.name, sar_models))


def estimate_and_check(
    raster_path: Path, card: ModelCard, options: Any, probability_path: Path, log: Optional[Callable[[str], None]]
) -> list[str]:
    """Say how big the job is before starting; refuse what cannot fit the disk. Returns warnings."""
    from .estimate import check_disk, estimate_job

    estimate = estimate_job(raster_path, card, options, probability_path)
    warnings = []
    disk_warning = check_disk(estimate, probability_path)
    if estimate.is_large:
        warnings.append(f"This is a large job. {estimate.describe()} Limit it with an extent or mask to go faster.")
    if disk_warning:
        warnings.append(disk_warning)
    if log is not None:
        for line in warnings or [estimate.describe()]:
            log(line)
    return warnings


def detect_buildings(
    raster_path: Union[str, Path],
    out_vector: Optional[Union[str, Path]],
    card: Union[ModelCard, str],
    probability_path: Optional[Union[str, Path]] = None,
    inference_options: Any = None,
    polygon_options: Any = None,
    progress: Optional[ProgressCallback] = None,
    is_canceled: Optional[CancelCallback] = None,
    model: Any = None,
    log: Optional[Callable[[str], None]] = None,
) -> DetectResult:
    """Run the model over the raster and turn its probabilities into building polygons.

    Both outputs appear only when everything succeeded: a failure or cancel leaves neither behind
    and never touches files that were already at those paths. Every parameter and output path is
    checked before the model is loaded; `log` receives the job's size estimate before the work.
    """
    from ..vectors.polygons import PolygonOptions
    from .options import InferenceOptions

    started = time.monotonic()
    card = card if isinstance(card, ModelCard) else find_model(card)
    raster_path = Path(raster_path)
    inference_options = inference_options or InferenceOptions()
    polygon_options = polygon_options or PolygonOptions(threshold=card.threshold)
    # The probability raster records the threshold these polygons use, not only the card's.
    inference_options = dataclasses.replace(inference_options, threshold=polygon_options.threshold)
    final_probability = Path(probability_path) if probability_path else None
    final_vector = Path(out_vector) if out_vector else None
    check_detect_job(raster_path, final_vector, final_probability, inference_options, polygon_options)
    check_sensor(raster_path, card)
    remove_stale_partials(p.parent for p in (final_vector, final_probability) if p is not None)
    with contextlib.ExitStack() as stack:
        if final_probability is not None:
            working_probability = temporary_sibling(final_probability)
        else:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="footprint_"))
            working_probability = Path(scratch) / "probability.tif"
        warnings = estimate_and_check(raster_path, card, inference_options, working_probability, log)
        try:
            run = _run_stages(
                raster_path,
                card,
                working_probability,
                final_vector,
                inference_options,
                polygon_options,
                progress,
                is_canceled,
                model,
            )
            if final_probability is not None:
                os.replace(working_probability, final_probability)
        except BaseException:
            remove_quietly(working_probability)
            raise
    if progress is not None:
        progress(1.0)
    return _detect_result(run, card, final_vector, final_probability, started, warnings)


def _run_stages(
    raster_path,
    card,
    working_probability,
    final_vector,
    inference_options,
    polygon_options,
    progress,
    is_canceled,
    model,
) -> tuple[Any, Any, float]:
    """Inference, polygons, then the vector file (written atomically by write_buildings)."""
    from ..vectors.polygons import polygonize_raster, write_buildings
    from .estimate import remember_speed, tta_passes
    from .inference import predict_raster

    started = time.monotonic()
    inference = predict_raster(
        raster_path,
        card,
        working_probability,
        inference_options,
        progress=sub_progress(progress, 0.0, 0.85),
        is_canceled=is_canceled,
        model=model,
    )
    if model is None:
        remember_speed(
            card, inference, tta_passes(card, inference_options), int(inference_options.tile_size or card.tile_size)
        )
    inference_seconds = time.monotonic() - started
    check_canceled(is_canceled)
    polygons = polygonize_raster(
        working_probability,
        polygon_options,
        source=raster_path.name,
        model=card.display_name,
        progress=sub_progress(progress, 0.85, 0.98),
        is_canceled=is_canceled,
    )
    check_canceled(is_canceled)
    if final_vector is not None:
        write_buildings(polygons, final_vector)
    return inference, polygons, inference_seconds


def _detect_result(
    run, card: ModelCard, final_vector, final_probability, started: float, warnings: list[str]
) -> DetectResult:
    inference, polygons, inference_seconds = run
    seconds = time.monotonic() - started
    return DetectResult(
        buildings_path=final_vector,
        probability_path=final_probability,
        n_buildings=len(polygons.geometries),
        geometries=polygons.geometries,
        attributes=polygons.attributes,
        crs_wkt=polygons.crs_wkt,
        device=inference.device,
        device_name=inference.device_name,
        device_note=inference.device_note,
        precision=inference.precision,
        seconds=seconds,
        inference_seconds=inference_seconds,
        polygon_seconds=seconds - inference_seconds,
        megapixels=inference.megapixels,
        model=card.display_name,
        warnings=warnings + list(inference.warnings) + list(polygons.warnings),
        timings=dict(inference.timings),
    )
