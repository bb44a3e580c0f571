"""Model cards: the JSON that travels with every weights file, and the model zoo folders.

A model is `<name>.json` (the card) plus a weights file named in the card, side by side in
the bundled `model_zoo/` or in the user model folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..common.errors import ModelError
from ..io.atomic import write_text_atomically

BUNDLED_ZOO_DIR = Path(__file__).resolve().parents[3] / "model_zoo"
USER_MODELS_ENV = "FOOTPRINT_USER_MODELS"
# Models an older plugin version trained from the GUI into the QGIS profile: still listed, never written to.
LEGACY_MODELS_ENV = "FOOTPRINT_LEGACY_MODELS"

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
        """The weights file, which must lie inside the card's own folder (the model folder is a jail)."""
        if self.path is None:
            raise ModelError(f"Model card '{self.name}' has no location; save it before loading weights.")
        folder = self.path.parent.resolve()
        weights = (folder / str(self.weights_file)).resolve()
        if weights.parent != folder:
            raise ModelError(
                f"Model card '{self.name}' ({self.path}) names the weights file {self.weights_file!r}, which is "
                "outside its model folder. Weights must sit beside the card; re-import the model."
            )
        return weights

    @property
    def display_name(self) -> str:
        return f"{self.name} (v{self.version})"

    def validate(self) -> None:
        """Raise ModelError naming the first bad field: types, ranges and consistency."""
        problem = card_problem(self)
        if problem:
            where = f" ({self.path})" if self.path else ""
            raise ModelError(
                f"Invalid model card '{self.name}'{where}: {problem}. Fix the card or re-import the model."
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("path", None)
        data.pop("bundled", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Optional[Path] = None) -> ModelCard:
        where = f" {path}" if path else ""
        if not isinstance(data, dict):
            raise ModelError(
                f"Model card{where} must be a JSON object, not a {type(data).__name__}. Re-import the model."
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"path", "bundled"}
        missing = [k for k in ("name", "architecture", "in_channels", "out_channels", "band_roles") if k not in data]
        if missing:
            raise ModelError(f"Model card{where} lacks required field(s): {', '.join(missing)}.")
        kwargs = {k: v for k, v in data.items() if k in known}
        if isinstance(kwargs.get("version"), (int, float)) and not isinstance(kwargs.get("version"), bool):
            kwargs["version"] = str(kwargs["version"])  # "version": 2 is what people type
        extra = data.get("extra", {})
        if not isinstance(extra, dict):
            raise ModelError(f"Invalid model card{where}: field 'extra' must be an object, not {extra!r}.")
        kwargs["extra"] = {**extra, **{k: v for k, v in data.items() if k not in known}}
        card = cls(**kwargs, path=path)
        card.validate()
        return card


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _type_problem(card: ModelCard) -> Optional[str]:
    """The first field whose JSON type is wrong (a hand-edited "512" instead of 512)."""
    expected = {
        "name": (str, "a string"),
        "architecture": (str, "a string"),
        "sensor": (str, "a string"),
        "tta": (str, "a string"),
        "weights_file": (str, "a string"),
        "sha256": (str, "a string"),
        "version": (str, "a string"),
        "description": (str, "a string"),
        "licence": (str, "a string"),
        "training_command": (str, "a string"),
        "allow_panchromatic": (bool, "true or false"),
        "scaling": (dict, "an object"),
        "metrics": (dict, "an object"),
        "extra": (dict, "an object"),
        "training_data": (list, "a list"),
    }
    for name, (kind, words) in expected.items():
        value = getattr(card, name)
        if not isinstance(value, kind):
            return f"field '{name}' must be {words}, not {value!r} ({type(value).__name__})"
    for name in ("in_channels", "out_channels", "tile_size", "overlap"):
        value = getattr(card, name)
        if not _is_int(value):
            return f"field '{name}' must be a whole number, not {value!r} ({type(value).__name__})"
    for name in ("gsd_m", "threshold"):
        value = getattr(card, name)
        if not _is_number(value):
            return f"field '{name}' must be a number, not {value!r} ({type(value).__name__})"
    for name in ("band_roles", "heads"):
        value = getattr(card, name)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return f"field '{name}' must be a list of names, not {value!r}"
    return None


def card_problem(card: ModelCard) -> Optional[str]:
    """Why the card cannot be used (naming the field), or None."""
    from ..common.vocabulary import ARCHITECTURES, model_name_problem

    problem = _type_problem(card)
    if problem:
        return problem
    checks = (
        ("name", model_name_problem(card.name)),
        ("architecture", None if card.architecture in ARCHITECTURES else f"must be one of {', '.join(ARCHITECTURES)}"),
        ("sensor", None if card.sensor in SENSORS else f"must be one of {SENSORS}"),
        ("tta", None if card.tta in TTA_POLICIES else f"must be one of {TTA_POLICIES}"),
        ("in_channels", None if 1 <= card.in_channels <= 64 else "must be between 1 and 64"),
        ("out_channels", None if 1 <= card.out_channels <= 8 else "must be between 1 and 8"),
        (
            "band_roles",
            None
            if len(card.band_roles) == card.in_channels
            else f"lists {len(card.band_roles)} bands but in_channels is {card.in_channels}",
        ),
        (
            "heads",
            None
            if len(card.heads) == card.out_channels
            else f"lists {len(card.heads)} outputs but out_channels is {card.out_channels}",
        ),
        ("heads", None if not card.heads or card.heads[0] == "footprint" else "must start with 'footprint'"),
        (
            "scaling",
            None
            if card.scaling.get("method") in SCALING_METHODS
            else f"scaling.method must be one of {SCALING_METHODS}",
        ),
        ("gsd_m", None if 0.01 <= card.gsd_m <= 1000 else "must be between 0.01 and 1000 metres"),
        (
            "tile_size",
            None
            if 32 <= card.tile_size <= 4096 and card.tile_size % 32 == 0
            else "must be a multiple of 32 between 32 and 4096",
        ),
        (
            "overlap",
            None
            if 0 <= card.overlap < card.tile_size // 2
            else f"must be between 0 and half the tile size ({card.tile_size // 2})",
        ),
        ("threshold", None if 0.0 < card.threshold < 1.0 else "must be between 0 and 1"),
        ("weights_file", _weights_name_problem(card.weights_file)),
    )
    for name, message in checks:
        if message:
            value = getattr(card, name)
            if message.startswith("Model name"):
                return f"field 'name': {message}"
            return f"field '{name}' ({value!r}) {message}"
    return None


def _weights_name_problem(weights_file: str) -> Optional[str]:
    if not weights_file:
        return None  # a card being built; load_model says the weights are missing
    if Path(weights_file).name != weights_file or weights_file.startswith(".") or "\\" in weights_file:
        return "must be a plain file name beside the card (no folders, no leading dot)"
    return None


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(path: Path | str) -> ModelCard:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"Model card not found: {path}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"Cannot read the model card {path} ({exc}). Re-import the model.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"Model card {path} is broken JSON ({exc}). Fix it in a text editor or re-import the model."
        ) from None
    card = ModelCard.from_dict(data, path=path)
    card.bundled = path.parent.resolve() == BUNDLED_ZOO_DIR
    return card


def save_card(card: ModelCard, path: Path | str) -> Path:
    """Write the card atomically (temporary file + rename) and remember its location."""
    path = write_text_atomically(path, json.dumps(card.to_dict(), indent=2, sort_keys=False) + "\n")
    card.path = path
    return path


def user_model_dir() -> Path:
    """The one folder for trained and imported models, the same for the GUI, Processing and the CLI."""
    configured = os.environ.get(USER_MODELS_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_DATA_HOME") or (os.environ.get("APPDATA") if os.name == "nt" else None)
    return Path(base or Path.home() / ".local" / "share") / "footprint_plugin" / "models"


def model_dirs() -> list[Path]:
    dirs = [BUNDLED_ZOO_DIR, user_model_dir()]
    legacy = os.environ.get(LEGACY_MODELS_ENV)
    if legacy and Path(legacy).resolve() != user_model_dir().resolve():
        dirs.append(Path(legacy))
    return dirs


def scan_models(dirs: Optional[list[Path]] = None) -> tuple[list[ModelCard], list[str]]:
    """(valid cards, bundled first; one warning per card that was skipped, naming the file and why).

    Never raises: one hand-edited card must not take the model list (or QGIS's provider) down.
    """
    cards: list[ModelCard] = []
    problems: list[str] = []
    seen: dict[str, ModelCard] = {}
    for folder in dirs if dirs is not None else model_dirs():
        try:
            card_paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
        except OSError as exc:
            problems.append(f"Cannot list the model folder {folder} ({exc}).")
            continue
        for card_path in card_paths:
            try:
                card = load_card(card_path)
            except ModelError as exc:
                problems.append(f"Skipped {card_path}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - whatever a broken card does, the list survives
                problems.append(f"Skipped {card_path}: unreadable model card ({type(exc).__name__}: {exc}).")
                continue
            if card.name in seen:
                first = seen[card.name]
                reason = "the bundled model" if first.bundled else f"the model in {first.path}"
                problems.append(
                    f"Skipped {card_path}: its name '{card.name}' is already used by {reason}, which hides it. "
                    "Re-import or retrain it under another name."
                )
                continue
            seen[card.name] = card
            cards.append(card)
    return cards, problems


def list_models(dirs: Optional[list[Path]] = None) -> list[ModelCard]:
    """All valid cards in the zoo folders, bundled first. Broken cards are skipped (see scan_models)."""
    return scan_models(dirs)[0]


def model_warnings(dirs: Optional[list[Path]] = None) -> list[str]:
    """The warnings about skipped cards, for front ends to show."""
    return scan_models(dirs)[1]


def bundled_names() -> set[str]:
    return {card.name for card in list_models([BUNDLED_ZOO_DIR])}


def shadowing_problem(name: str) -> Optional[str]:
    """Why a user model may not be called `name` (it would hide behind a bundled model), or None."""
    if name in bundled_names():
        return (
            f"'{name}' is the name of a bundled model; a user model with that name would be hidden behind it. "
            "Choose another name (e.g. add your area: my_town_v1)."
        )
    return None


def check_new_model_name(name: str) -> str:
    """The name for a model about to be trained or imported: the one name rule, and no bundled name."""
    from ..common.vocabulary import check_model_name

    check_model_name(name)
    problem = shadowing_problem(name)
    if problem:
        raise ModelError(problem)
    return name


def find_model(name_or_path: str | Path, dirs: Optional[list[Path]] = None) -> ModelCard:
    """A card by model name, or by path to a card JSON. Unknown names list the valid ones;
    a name whose card is broken says what is wrong with it instead of 'unknown'."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.exists():
        return load_card(candidate)
    cards, problems = scan_models(dirs)
    for card in cards:
        if card.name == str(name_or_path):
            return card
    for problem in problems:
        if f"/{name_or_path}.json:" in problem or f"'{name_or_path}'" in problem:
            raise ModelError(f"Model '{name_or_path}' cannot be used. {problem}")
    valid = ", ".join(c.name for c in cards) or "(none installed)"
    raise ModelError(f"Unknown model '{name_or_path}'. Valid models: {valid}.")


def default_model_name(sensor: str = "EO") -> Optional[str]:
    """The bundled model used when the user picks none."""
    bundled = list_models([BUNDLED_ZOO_DIR])
    for card in bundled:
        if card.sensor == sensor and card.extra.get("default", False):
            return card.name
    for card in bundled:
        if card.sensor == sensor:
            return card.name
    return None


# ---------------------------------------------------------------------------------------------
# Import and delete (shared by the model manager, the CLI and Processing)


def import_model(
    card_file: Path | str, weights_file: Optional[Path | str] = None, target_dir: Optional[Path] = None
) -> ModelCard:
    """Copy a card and its weights into the user model folder, after validating everything; returns the new card.

    Nothing is copied unless the card is valid, its name follows the rule and hides no bundled model,
    and the weights are a real file beside the card (or the one the user picked) matching its sha256.
    """
    from ..common.vocabulary import check_model_name

    card_file = Path(card_file)
    card = load_card(card_file)
    check_model_name(card.name)
    problem = shadowing_problem(card.name)
    if problem:
        raise ModelError(f"Cannot import {card_file.name}: {problem}")
    from .statedict import check_fits_architecture, check_weights_header, read_state_dict

    weights = Path(weights_file) if weights_file else card.weights_path
    check_weights_header(weights)  # the first bytes and the zip directory: a wrong file is refused in no time
    actual = sha256_file(weights)
    if card.sha256 and actual.lower() != card.sha256.lower():
        raise ModelError(
            f"{weights.name} does not match the card's sha256; the download is damaged or belongs to another model."
        )
    # Keys and shapes against the card's network (tensors memory-mapped, network on torch's meta device).
    state = read_state_dict(weights, f"the weights for '{card.name}'")
    check_fits_architecture(state, card.architecture, card.in_channels, card.out_channels, weights.name)
    del state
    target_dir = Path(target_dir) if target_dir else user_model_dir()
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"Cannot create the model folder {target_dir} ({exc}). Check its permissions.") from None
    target_card = target_dir / f"{card.name}.json"
    target_weights = target_dir / f"{card.name}.pt"
    if target_card.exists() or target_weights.exists():
        raise ModelError(f"A user model named '{card.name}' exists already. Delete it first or rename the card.")
    card.weights_file, card.sha256 = target_weights.name, actual
    card.validate()
    from ..io.atomic import copy_atomically, remove_quietly

    copy_atomically(weights, target_weights)
    try:
        save_card(card, target_card)
    except BaseException:
        remove_quietly(target_weights)
        raise
    return load_card(target_card)


def training_reports_dir(model_folder: Path) -> Path:
    """Where a model folder keeps its models' training reports: <name>.png and <name>.json."""
    return Path(model_folder) / "training_reports"


def model_reports(card: ModelCard) -> list[Path]:
    """The training report files that belong to this model (beside it, in training_reports/)."""
    if card.path is None:
        return []
    reports = training_reports_dir(card.path.parent)
    return [path for path in (reports / f"{card.name}.png", reports / f"{card.name}.json") if path.is_file()]


def delete_model(card: ModelCard, only_in: Optional[Path] = None) -> list[Path]:
    """Remove a user model's card, weights and training reports; returns what was removed.

    Bundled models are read-only; nothing outside the card's own folder is ever deleted, whatever its
    weights_file says. only_in (the CLI passes the user model folder) refuses a card anywhere else.
    """
    if card.bundled or card.path is None:
        raise ModelError(f"'{card.name}' is bundled with the plugin and cannot be deleted.")
    folder = card.path.parent.resolve()
    if folder == BUNDLED_ZOO_DIR:
        raise ModelError(f"'{card.name}' is bundled with the plugin and cannot be deleted.")
    if only_in is not None and folder != Path(only_in).resolve():
        raise ModelError(
            f"'{card.name}' ({card.path}) is not in the user model folder {only_in}; only models there can be "
            "deleted here. Remove other files yourself."
        )
    weights: Optional[Path] = None
    if card.weights_file:
        try:
            weights = card.weights_path  # refuses a weights_file outside the folder
        except ModelError:
            weights = None
    removed = [card.path]
    reports = model_reports(card)
    card.path.unlink(missing_ok=True)
    if weights is not None and weights.is_file() and weights.parent == folder:
        weights.unlink()
        removed.append(weights)
    for report in reports:
        report.unlink(missing_ok=True)
        removed.append(report)
    return removed
