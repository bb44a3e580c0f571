"""Detect buildings end to end: probability raster, then polygons, then the vector file.

Shared by the command line and the Processing algorithms, so every entry point behaves the same.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .atomic import temporary_sibling
from .callbacks import CancelCallback, ProgressCallback, check_canceled, sub_progress
from .modelcard import ModelCard, find_model


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


SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix")


def _companions(path: Path) -> list[Path]:
    """The file plus the sidecars GDAL writes beside it."""
    if path.suffix.lower() == ".shp":
        return [path.with_suffix(ext) for ext in SHAPEFILE_PARTS]
    return [path, path.with_name(path.name + ".aux.xml")]


def _remove_quietly(path: Path) -> None:
    for candidate in _companions(path):
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass


def _promote(working: Path, final: Path) -> None:
    for source, target in zip(_companions(working), _companions(final)):
        if source.exists():
            os.replace(source, target)


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
) -> DetectResult:
    """Run the model over the raster and turn its probabilities into building polygons.

    Both outputs appear only when everything succeeded: a failure or cancel leaves neither behind
    and never touches files that were already at those paths.
    """
    from .inference import InferenceOptions, predict_raster
    from .polygons import PolygonOptions, polygonize_raster, write_buildings

    started = time.monotonic()
    card = card if isinstance(card, ModelCard) else find_model(card)
    raster_path = Path(raster_path)
    inference_options = inference_options or InferenceOptions()
    polygon_options = polygon_options or PolygonOptions(threshold=card.threshold)

    final_probability = Path(probability_path) if probability_path else None
    scratch_dir: Optional[tempfile.TemporaryDirectory] = None
    if final_probability is not None:
        working_probability = temporary_sibling(final_probability)
    else:
        scratch_dir = tempfile.TemporaryDirectory(prefix="footprint_")
        working_probability = Path(scratch_dir.name) / "probability.tif"
    final_vector = Path(out_vector) if out_vector else None
    working_vector = temporary_sibling(final_vector) if final_vector is not None else None

    try:
        inference = predict_raster(
            raster_path,
            card,
            working_probability,
            inference_options,
            progress=sub_progress(progress, 0.0, 0.85),
            is_canceled=is_canceled,
            model=model,
        )
        inference_done = time.monotonic()
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
        if working_vector is not None:
            write_buildings(polygons, working_vector)
        check_canceled(is_canceled)
        if final_probability is not None:
            _promote(working_probability, final_probability)
        if working_vector is not None and final_vector is not None:
            _promote(working_vector, final_vector)
    except BaseException:
        _remove_quietly(working_probability)
        if working_vector is not None:
            _remove_quietly(working_vector)
        raise
    finally:
        if scratch_dir is not None:
            scratch_dir.cleanup()
    if progress is not None:
        progress(1.0)
    finished = time.monotonic()
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
        seconds=finished - started,
        inference_seconds=inference_done - started,
        polygon_seconds=finished - inference_done,
        megapixels=inference.megapixels,
        model=card.display_name,
        warnings=list(inference.warnings) + list(polygons.warnings),
    )
