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

from ..common.errors import ModelError, OutputError
from ..common.vocabulary import check_model_name
from ..io.atomic import save_torch_atomically
from ..models import create_model
from .modelcard import ModelCard, load_card, save_card, sha256_file, user_model_dir

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
    check_model_name(card.name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the model folder {folder}: {exc}. Choose a writable folder.") from None
    check_model_name(card.name)
    # Only the user model folder is listed beside the bundled one, so only there would the name hide.
    if folder.resolve() == user_model_dir().resolve():
        from .modelcard import shadowing_problem

        problem = shadowing_problem(card.name)
        if problem:
            raise ModelError(problem)
    weights_path = folder / f"{card.name}.pt"
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_torch_atomically(state, weights_path)
    card.weights_file = weights_path.name
    card.sha256 = sha256_file(weights_path)
    card.validate()
    return save_card(card, folder / f"{card.name}.json")


SPACENET6_BANDS = ["HH", "HV", "VH", "VV"]


def import_spacenet6_baseline(weights_file: Union[str, Path], name: str) -> ModelCard:
    """Wrap a SpaceNet 6 baseline checkpoint (TernausNet UNet11 on quad-pol SAR) in a model card.

    The checkpoint's state_dict is checked against `unet_vgg11` key by key; in_channels come from its first conv.
    The name is checked (rule, bundled names) before the file is even read.
    """
    from .modelcard import shadowing_problem

    check_model_name(name)
    problem = shadowing_problem(name)
    if problem:
        raise ModelError(problem)
    if (user_model_dir() / f"{name}.json").exists():
        raise ModelError(f"A user model named '{name}' exists already. Delete it first or choose another name.")
    try:
        loaded = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means an unusable file
        raise ModelError(f"Cannot read {weights_file}: {exc}. Pick the baseline's .pth state_dict file.") from None
    state = extract_state_dict(loaded)
    first_conv = next((v for k, v in state.items() if k.endswith("weight") and v.ndim == 4), None)
    if first_conv is None:
        raise ModelError(f"{weights_file} has no convolution weights; it is not a SpaceNet 6 baseline checkpoint.")
    in_channels = int(first_conv.shape[1])
    model = create_model("unet_vgg11", in_channels, 1)
    load_state_dict_checked(model, state, str(weights_file))
    sar = in_channels == 4
    card = ModelCard(
        name=name,
        architecture="unet_vgg11",
        in_channels=in_channels,
        out_channels=1,
        band_roles=SPACENET6_BANDS[:in_channels] if in_channels <= 4 else [f"band{i + 1}" for i in range(in_channels)],
        sensor="SAR" if sar else "EO",
        scaling={"method": "db", "input_units": "db", "clip_db": [-30.0, 10.0]}
        if sar
        else {"method": "percentile", "low": 2, "high": 98},
        gsd_m=0.5,
        tile_size=512,
        overlap=64,
        threshold=0.5,
        tta="none",
        description=f"SpaceNet 6 baseline (TernausNet UNet11) imported from {Path(weights_file).name}. "
        "Check that your SAR rasters match its bands and scaling before relying on it.",
        training_data=[{"name": "SpaceNet 6 (Capella SAR, Rotterdam)", "licence": "CC BY-SA 4.0"}],
        licence="CC BY-SA 4.0 (SpaceNet 6 data); see the baseline's licence",
    )
    return load_card(save_model(model, card, user_model_dir()))
