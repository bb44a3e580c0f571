"""Safe loading and saving of model weights described by a model card.

Weights are plain ``torch.save``d state_dicts, loaded with ``weights_only=True`` (a weights file
from the internet can never run code) after checking the sha256 recorded in the card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from torch import nn

from ..common.errors import ModelError, OutputError
from ..common.vocabulary import check_model_name
from ..io.atomic import save_torch_atomically
from ..models import create_model
from .modelcard import ModelCard, check_new_model_name, load_card, save_card, sha256_file, user_model_dir
from .statedict import extract_state_dict, fit_problem, read_state_dict

__all__ = ["extract_state_dict", "load_model", "load_state_dict_checked", "save_model"]


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), turning key/shape mismatches into a ModelError that names them."""
    problem = fit_problem(model.state_dict(), state)
    if problem:
        raise ModelError(
            f"The weights in {source} do not fit the architecture in the card: {problem}. "
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
    state = read_state_dict(weights, f"the weights of model '{card.name}'")
    load_state_dict_checked(model, state, str(weights))
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
    # Only the user model folder is listed beside the bundled one, so only there would the name hide. The front
    # ends refuse bundled names for every folder (modelcard.check_new_model_name); maintainers' scripts that
    # retrain a bundled model save it elsewhere under its own name.
    if folder.resolve() == user_model_dir().resolve():
        check_new_model_name(card.name)
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
    check_new_model_name(name)
    if (user_model_dir() / f"{name}.json").exists():
        raise ModelError(f"A user model named '{name}' exists already. Delete it first or choose another name.")
    state = read_state_dict(Path(weights_file), "the SpaceNet 6 baseline checkpoint")
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
