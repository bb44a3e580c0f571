"""Weights files as plain state_dicts: the cheap header check, the safe load, and the fit to an architecture.

Only ``weights_only=True`` loads are ever made (a weights file from the internet cannot run code), and a
refused pickle is explained in our words: torch's own message advises ``weights_only=False``, which the
plugin must never pass on. Torch-free to import; torch is imported when a file is read.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

from ..common.errors import ModelError

STATE_DICT_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"  # torch.save's zip archive, or its legacy pickle format


def check_weights_header(weights: Path) -> None:
    """Refuse, from the first bytes and the zip directory only, a file torch.save did not write."""
    if not weights.is_file():
        raise ModelError(f"Weights file {weights} not found. Put it beside the card or pick it explicitly.")
    with open(weights, "rb") as handle:
        head = handle.read(4)
    refused = ModelError(f"{weights} is not a PyTorch weights file (saved with torch.save). Pick the model's .pt file.")
    if head.startswith(_PICKLE_MAGIC):
        return
    if not head.startswith(_ZIP_MAGIC):
        raise refused
    try:
        with zipfile.ZipFile(weights) as archive:  # reads the central directory, not the tensors
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        raise refused from None
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise refused


def unpickling_problem(exc: BaseException) -> str:
    """Why torch's safe loader refused a file, without torch's advice to load it unsafely."""
    text = str(exc)
    if "weights_only" in text or "Unpickler" in text or type(exc).__name__ == "UnpicklingError":
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" (it holds a {found.group(1)} object)" if found else ""
        return (
            f"it is a pickled Python object{what}, not a plain state_dict of tensors; such files can run code when "
            "loaded, so they are refused. Ask for the weights saved with torch.save(model.state_dict(), path)"
        )
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def read_state_dict(weights: Path, what: str) -> dict[str, Any]:
    """The state_dict in a weights file, loaded safely; zip archives are memory-mapped (a 2 GB file costs no RAM)."""
    import torch

    with open(weights, "rb") as handle:
        is_zip = handle.read(4).startswith(_ZIP_MAGIC)
    try:
        loaded = torch.load(weights, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # any unpickling failure means an unusable file
        raise ModelError(f"Cannot read {what} ({weights}): {unpickling_problem(exc)}.") from None
    return extract_state_dict(loaded)


def extract_state_dict(loaded: Any) -> dict[str, Any]:
    """The state_dict inside a raw dict or a {"state_dict": ...}/{"model": ...} wrapper, without "module."."""
    import torch

    state = loaded
    if isinstance(state, dict):
        for key in STATE_DICT_WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            "The weights file does not contain a PyTorch state_dict (a dict of tensor names to tensors). "
            "Save the model with torch.save(model.state_dict(), path)."
        )
    # DataParallel / DistributedDataParallel checkpoints prefix every key with "module.".
    return {re.sub(r"^module\.", "", key): value for key, value in state.items()}


def fit_problem(expected: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """The keys missing, unexpected or of another shape ('' when the state fits `expected`)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    details = []
    if missing:
        details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        details.append(f"{len(wrong_shape)} with another shape (e.g. {'; '.join(wrong_shape[:3])})")
    return ", ".join(details)


def check_fits_architecture(
    state: Mapping[str, Any], architecture: str, in_channels: int, out_channels: int, source: str
) -> None:
    """Refuse weights whose keys and shapes are not the architecture's (built on torch's meta device: no memory)."""
    import torch

    from ..models import create_model

    with torch.device("meta"):
        expected = create_model(architecture, in_channels, out_channels).state_dict()
    problem = fit_problem(expected, state)
    if problem:
        raise ModelError(
            f"The weights in {source} do not fit the architecture in the card ({architecture}, {in_channels} in, "
            f"{out_channels} out): {problem}. Check the card's architecture, in_channels and out_channels."
        )
