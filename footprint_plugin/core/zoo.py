"""Safe loading and saving of model weights described by a model card.

Weights are plain ``torch.save``d state_dicts, loaded with ``weights_only=True`` (a weights file
from the internet can never run code) after checking the sha256 recorded in the card.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from .atomic import save_torch_atomically
from .errors import ModelError, OutputError
from .modelcard import ModelCard, save_card, sha256_file
from .models import create_model

STATE_DICT_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def extract_state_dict(loaded: Any) -> dict[str, torch.Tensor]:
    """The state_dict inside a raw dict or a {"state_dict": ...}/{"model": ...} wrapper, without "module."."""
    state = loaded
    if isinstance(state, dict):
        for key in STATE_DICT_WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            "The weights file does not contain a PyTorch state_dict (a dict of tensor names to tensors). "
            "Save the model with torch.save(model.state_dict(), path)."
        )
    # DataParallel / DistributedDataParallel checkpoints prefix every key with "module.".
    return {re.sub(r"^module\.", "", key): value for key, value in state.items()}


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), turning key/shape mismatches into a ModelError that names them."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} with another shape (e.g. {'; '.join(wrong_shape[:3])})")
        raise ModelError(
            f"The weights in {source} do not fit the architecture in the card: {', '.join(details)}. "
            "Check the card's architecture, in_channels and out_channels."
        )
    model.load_state_dict(state, strict=True)


def load_model(card: ModelCard, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The card's network with its verified weights, in eval mode on `device`."""
    card.validate()
    weights = card.weights_path
    if not card.weights_file or not weights.is_file():
        raise ModelError(
            f"Weights file of model '{card.name}' not found: {weights}. Re-install or re-import the model."
        )
    if not card.sha256:
        raise ModelError(f"Model card '{card.name}' has no sha256; re-import the model so it can be verified.")
    actual = sha256_file(weights)
    if actual.lower() != card.sha256.lower():
        raise ModelError(
            f"The weights file does not match its card for model '{card.name}' ({weights}): sha256 is "
            f"{actual[:12]}..., the card says {card.sha256[:12]}.... The file is corrupt or was replaced; "
            "re-install or re-import the model."
        )
    model = create_model(card.architecture, card.in_channels, card.out_channels)
    try:
        loaded = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means an unusable file
        raise ModelError(
            f"Cannot read the weights of model '{card.name}' ({weights}): {exc}. "
            "Only plain state_dicts saved with torch.save are supported."
        ) from None
    load_state_dict_checked(model, extract_state_dict(loaded), str(weights))
    return model.to(device).eval()


def save_model(model: nn.Module, card: ModelCard, folder: Union[str, Path]) -> Path:
    """Write ``<name>.pt`` then ``<name>.json`` (with the weights' sha256) atomically; returns the card path.

    The weights are written first so a card never points at missing or partial weights.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the model folder {folder}: {exc}. Choose a writable folder.") from None
    if not re.fullmatch(r"[A-Za-z0-9._-]+", card.name):
        raise ModelError(f"Model name '{card.name}' may only use letters, digits, '.', '_' and '-'.")
    weights_path = folder / f"{card.name}.pt"
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_torch_atomically(state, weights_path)
    card.weights_file = weights_path.name
    card.sha256 = sha256_file(weights_path)
    card.validate()
    return save_card(card, folder / f"{card.name}.json")
