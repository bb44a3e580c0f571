"""The new model's card: built from the base model (fine-tuning) or the settings, with its provenance.

A fine-tuned card inherits the base's data sources and licences, then adds the user's polygons, the
time budget and its validation score, and says that the base's held-out figures no longer apply
where it was fine-tuned (that area is now training data).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..common.errors import InputError
from ..zoo.modelcard import ModelCard
from .chips import raster_info
from .config import TrainingConfig, TrainingPair
from .labels import heads_for

USER_POLYGONS_LICENCE = "the user's own polygons: licence chosen by their author"


def _band_roles(count: int, sensor: str) -> list[str]:
    if sensor == "SAR":
        return [f"sar{i + 1}" for i in range(count)]
    return {1: ["pan"], 3: ["red", "green", "blue"], 4: ["red", "green", "blue", "nir"]}.get(
        count, [f"band{i + 1}" for i in range(count)]
    )


def _default_scaling(sensor: str) -> dict[str, Any]:
    if sensor == "SAR":
        return {"method": "db", "input_units": "linear", "clip_db": [-30.0, 10.0]}
    # Per-raster percentile stretch to 0..1: the same model reads uint8 RGB and uint16 pan.
    return {"method": "percentile", "low": 2, "high": 98}


def _input_channels(
    config: TrainingConfig, pairs: Sequence[TrainingPair], base: Optional[ModelCard]
) -> tuple[int, bool]:
    """The model's input band count and whether it may read panchromatic rasters; refuses mixed band counts."""
    infos = {str(p.raster): raster_info(p.raster) for p in pairs}
    counts = {str(p.raster): infos[str(p.raster)]["count"] for p in pairs}
    test_names = set(config.test_areas or [])
    fit_counts = {c for p, c in counts.items() if not any(pp.name in test_names for pp in pairs if str(pp.raster) == p)}
    if base is not None:
        in_channels = base.in_channels
    else:
        multi = sorted({c for c in fit_counts if c > 1}) or sorted(fit_counts)
        in_channels = multi[0] if multi else 1
    allow_pan = config.sensor == "EO" and in_channels >= 3
    if base is not None:
        allow_pan = allow_pan and base.allow_panchromatic
    for count in counts.values():
        if count == in_channels or (count == 1 and allow_pan):
            continue
        listing = ", ".join(f"{Path(p).name}: {c}" for p, c in counts.items())
        if base is not None:
            expected = f"the base model needs {in_channels}"
        else:
            expected = "all rasters of one run need the same number"
        raise InputError(
            f"Rasters have different band counts ({listing}); {expected}. "
            "Export the rasters with the same bands (e.g. Raster > Extraction > Clip or Translate with band selection)."
        )
    return in_channels, allow_pan


def _card_from_base(config: TrainingConfig, base: ModelCard, allow_pan: bool) -> ModelCard:
    """Fine-tuning keeps the base model's architecture, bands, heads and tiling."""
    if config.heads != 1 and len(base.heads) != config.heads:
        raise InputError(
            f"The base model '{base.name}' has {len(base.heads)} head(s); fine-tuning keeps them. Leave heads at its value."
        )
    return ModelCard(
        name=config.out_name,
        architecture=base.architecture,
        in_channels=base.in_channels,
        out_channels=base.out_channels,
        band_roles=list(base.band_roles),
        sensor=base.sensor,
        scaling=copy.deepcopy(config.scaling or base.scaling),
        gsd_m=config.gsd_m or base.gsd_m,
        tile_size=base.tile_size,
        overlap=base.overlap,
        threshold=config.threshold,
        tta=base.tta,
        heads=list(base.heads),
        allow_panchromatic=allow_pan,
    )


def _source_gsd(raster: Path) -> float:
    from ..io import raster_io

    with raster_io.opened(raster) as dataset:
        source_gsd = raster_io.raster_gsd_m(dataset)
    if source_gsd is None:
        raise InputError(
            f"{Path(raster).name} has no usable CRS, so its ground sample distance is unknown. "
            "Assign one in QGIS (Raster > Projections > Assign Projection) or set the model GSD."
        )
    return round(source_gsd, 4)


def _new_card(config: TrainingConfig, pairs: Sequence[TrainingPair], in_channels: int, allow_pan: bool) -> ModelCard:
    gsd = config.gsd_m if config.gsd_m is not None else _source_gsd(pairs[0].raster)
    heads = list(heads_for(config.heads))
    return ModelCard(
        name=config.out_name,
        architecture=config.arch,
        in_channels=in_channels,
        out_channels=len(heads),
        band_roles=_band_roles(in_channels, config.sensor),
        sensor=config.sensor,
        scaling=copy.deepcopy(config.scaling or _default_scaling(config.sensor)),
        gsd_m=float(gsd),
        tile_size=config.tile_size,
        overlap=config.tile_size // 8,
        threshold=config.threshold,
        tta="lr" if config.sensor == "SAR" and config.tta == "d4" else config.tta,
        heads=heads,
        allow_panchromatic=allow_pan,
    )


def build_card(config: TrainingConfig, pairs: Sequence[TrainingPair], base: Optional[ModelCard]) -> ModelCard:
    in_channels, allow_pan = _input_channels(config, pairs, base)
    if base is not None:
        card = _card_from_base(config, base, allow_pan)
    else:
        card = _new_card(config, pairs, in_channels, allow_pan)
    card.version = config.version
    card.description = config.description
    card.training_data = list(config.training_data)
    card.licence = config.licence
    if base is not None:
        inherit_sources(card, base)
    card.training_command = config.training_command or _command_line()
    card.extra = dict(config.card_extra)
    if base is not None:
        card.extra["base_model"] = base.display_name
    card.validate()
    return card


def _command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv]) if sys.argv and sys.argv[0] else ""


def inherit_sources(card: ModelCard, base: ModelCard) -> None:
    """The base model's data sources and licences, kept in front of anything the run adds."""
    seen = {tuple(sorted(entry.items())) for entry in card.training_data}
    inherited = [dict(entry) for entry in base.training_data if tuple(sorted(entry.items())) not in seen]
    card.training_data = inherited + card.training_data
    licences = [text for text in (base.licence, card.licence) if text]
    card.licence = " ".join(dict.fromkeys(licences))


def base_held_out_areas(card: ModelCard) -> list[str]:
    """The areas a model was scored on but never trained on (its card's test areas and user-path scores)."""
    training = card.extra.get("training") if isinstance(card.extra.get("training"), dict) else {}
    areas = list(training.get("test_areas") or [])
    user_path = card.extra.get("held_out_user_path")
    if isinstance(user_path, dict):
        for scores in user_path.values():
            if isinstance(scores, dict):
                areas += [name for name, value in scores.items() if isinstance(value, (int, float))]
    return list(dict.fromkeys(areas))


def add_fine_tune_provenance(
    card: ModelCard,
    base: ModelCard,
    labels_source: str,
    n_buildings: int,
    n_cells: int,
    budget_minutes: Optional[float],
    validation_f1: Optional[float],
) -> dict[str, Any]:
    """Record what the fine-tune added (card.training_data and extra["fine_tune"]); returns the record."""
    cells = f" in {n_cells} cell{'s' if n_cells != 1 else ''}" if n_cells else ""
    source = f"user polygons from {labels_source}, {n_buildings} buildings{cells}"
    card.training_data.append({"source": source, "licence": USER_POLYGONS_LICENCE, "credit": labels_source})
    held_out = base_held_out_areas(base)
    record: dict[str, Any] = {
        "base_model": base.display_name,
        "labels": source,
        "n_buildings": n_buildings,
        "n_cells": n_cells,
        "budget_minutes": budget_minutes,
        "validation_f1": validation_f1,
        "base_held_out_note": (
            f"The base model's held-out figures ({', '.join(held_out) or 'its card metrics'}) no longer apply "
            f"where this model was fine-tuned: {labels_source} is now training data. Score it on other ground."
        ),
    }
    card.extra["fine_tune"] = record
    return record


def _area_tokens(area: str) -> tuple[str, Optional[str]]:
    """("hotosm_kampala", "z20") for "hotosm_kampala_z20": an area name and its zoom suffix, if any."""
    stem, _sep, last = area.rpartition("_")
    if stem and len(last) >= 3 and last[0] == "z" and last[1:].isdigit():
        return stem, last
    return area, None


def held_out_matches(card: ModelCard, raster_paths: Sequence[str | Path]) -> list[str]:
    """The base model's held-out areas that these rasters seem to be (by the area names in their paths).

    Fine-tuning there is allowed, but the card's held-out scores for that area then stop meaning anything.
    """
    matches = []
    for area in base_held_out_areas(card):
        name, zoom = _area_tokens(area.lower())
        for path in raster_paths:
            text = str(path).lower().replace("\\", "/")
            if name in text and (zoom is None or zoom in Path(text).name or f"/{zoom}/" in text):
                matches.append(area)
                break
    return matches
