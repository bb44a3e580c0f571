"""Model cards: the JSON that travels with every weights file, and the model zoo folders.

A model is `<name>.json` (the card) plus a weights file named in the card, side by side in
the bundled `model_zoo/` or in the user model folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .atomic import write_text_atomically
from .errors import ModelError

BUNDLED_ZOO_DIR = Path(__file__).resolve().parents[2] / "model_zoo"
USER_MODELS_ENV = "FOOTPRINT_USER_MODELS"

SENSORS = ("EO", "SAR")
TTA_POLICIES = ("none", "d4", "lr")
SCALING_METHODS = ("meanstd", "percentile", "db", "divide")


@dataclass
class ModelCard:
    """Everything needed to run a model correctly on a raster, and to credit its data.

    scaling examples:
      {"method": "divide", "value": 255.0, "mean": [..], "std": [..]}  # uint8 EO, then mean/std
      {"method": "percentile", "low": 2, "high": 98, "mean": [..], "std": [..]}  # any dtype -> 0..1
      {"method": "db", "input_units": "linear"|"db", "clip_db": [-30, 10]}  # SAR intensity
      {"method": "meanstd", "mean": [..], "std": [..]}  # raw values
    """

    name: str
    architecture: str
    in_channels: int
    out_channels: int
    band_roles: list[str]
    sensor: str = "EO"
    scaling: dict[str, Any] = field(default_factory=lambda: {"method": "percentile", "low": 2, "high": 98})
    gsd_m: float = 0.5
    tile_size: int = 512
    overlap: int = 64
    threshold: float = 0.5
    tta: str = "d4"
    heads: list[str] = field(default_factory=lambda: ["footprint"])
    allow_panchromatic: bool = False
    weights_file: str = ""
    sha256: str = ""
    version: str = "1.0"
    description: str = ""
    training_data: list[dict[str, str]] = field(default_factory=list)
    licence: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    training_command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the card was loaded from; not serialised.
    path: Optional[Path] = field(default=None, compare=False, repr=False)
    bundled: bool = field(default=False, compare=False)

    @property
    def weights_path(self) -> Path:
        if self.path is None:
            raise ModelError(f"Model card '{self.name}' has no location; save it before loading weights.")
        return self.path.parent / self.weights_file

    @property
    def display_name(self) -> str:
        return f"{self.name} (v{self.version})"

    def validate(self) -> None:
        """Raise ModelError if the card is internally inconsistent."""
        problems = []
        if self.sensor not in SENSORS:
            problems.append(f"sensor must be one of {SENSORS}, not {self.sensor!r}")
        if self.tta not in TTA_POLICIES:
            problems.append(f"tta must be one of {TTA_POLICIES}, not {self.tta!r}")
        if len(self.band_roles) != self.in_channels:
            problems.append(f"band_roles lists {len(self.band_roles)} bands but in_channels is {self.in_channels}")
        if len(self.heads) != self.out_channels:
            problems.append(f"heads lists {len(self.heads)} outputs but out_channels is {self.out_channels}")
        if self.scaling.get("method") not in SCALING_METHODS:
            problems.append(f"scaling.method must be one of {SCALING_METHODS}")
        if self.gsd_m <= 0 or self.tile_size < 32 or not 0 <= self.overlap < self.tile_size // 2:
            problems.append("gsd_m must be > 0, tile_size >= 32 and 0 <= overlap < tile_size/2")
        if problems:
            where = f" ({self.path})" if self.path else ""
            raise ModelError(f"Invalid model card '{self.name}'{where}: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("path", None)
        data.pop("bundled", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Optional[Path] = None) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)} - {"path", "bundled"}
        missing = [k for k in ("name", "architecture", "in_channels", "out_channels", "band_roles") if k not in data]
        if missing:
            raise ModelError(f"Model card {path or ''} lacks required field(s): {', '.join(missing)}.")
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {**data.get("extra", {}), **{k: v for k, v in data.items() if k not in known}}
        card = cls(**kwargs, path=path)
        card.validate()
        return card


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(path: Path | str) -> ModelCard:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"Model card not found: {path}.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"Model card {path} is not valid JSON ({exc}). Re-import the model.") from None
    card = ModelCard.from_dict(data, path=path)
    card.bundled = path.parent.resolve() == BUNDLED_ZOO_DIR
    return card


def save_card(card: ModelCard, path: Path | str) -> Path:
    """Write the card atomically (temporary file + rename) and remember its location."""
    path = write_text_atomically(path, json.dumps(card.to_dict(), indent=2, sort_keys=False) + "\n")
    card.path = path
    return path


def user_model_dir() -> Path:
    """Folder for trained and imported models. The QGIS plugin points it into the profile."""
    configured = os.environ.get(USER_MODELS_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "footprint_plugin" / "models"


def model_dirs() -> list[Path]:
    return [BUNDLED_ZOO_DIR, user_model_dir()]


def list_models(dirs: Optional[list[Path]] = None) -> list[ModelCard]:
    """All valid cards in the zoo folders, bundled first. Broken cards are skipped."""
    cards: list[ModelCard] = []
    seen: set[str] = set()
    for folder in dirs if dirs is not None else model_dirs():
        if not folder.is_dir():
            continue
        for card_path in sorted(folder.glob("*.json")):
            try:
                card = load_card(card_path)
            except ModelError:
                continue
            if card.name not in seen:
                seen.add(card.name)
                cards.append(card)
    return cards


def find_model(name_or_path: str | Path, dirs: Optional[list[Path]] = None) -> ModelCard:
    """A card by model name, or by path to a card JSON. Unknown names list the valid ones."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.exists():
        return load_card(candidate)
    cards = list_models(dirs)
    for card in cards:
        if card.name == str(name_or_path):
            return card
    valid = ", ".join(c.name for c in cards) or "(none installed)"
    raise ModelError(f"Unknown model '{name_or_path}'. Valid models: {valid}.")


def default_model_name(sensor: str = "EO") -> Optional[str]:
    """The bundled model used when the user picks none."""
    for card in list_models([BUNDLED_ZOO_DIR]):
        if card.sensor == sensor and card.extra.get("default", False):
            return card.name
    for card in list_models([BUNDLED_ZOO_DIR]):
        if card.sensor == sensor:
            return card.name
    return None
