"""The bundled default model's card loads strictly, its weights verify, and it credits every training source."""

from __future__ import annotations

from pathlib import Path

import torch

from footprint_plugin.core.zoo.modelcard import load_card
from footprint_plugin.core.zoo.weights import load_model

CARD = Path(__file__).resolve().parents[1] / "model_zoo" / "footprint_eo_lite0.json"
# Each training area and the credits its imagery and labels need (scripts/train_default_model.py, data READMEs).
NEEDED = {
    "hotosm_banepa": ("OpenAerialMap", "OpenStreetMap"),
    "hotosm_kathmandu": ("OpenAerialMap", "OpenStreetMap"),
    "hotosm_dar_zanzibar": ("OpenAerialMap", "OpenStreetMap"),
    "spacenet1_rio": ("SpaceNet",),
    "massachusetts_west_roxbury": ("MassGIS", "Mnih, 2013", "OpenStreetMap"),
    "massachusetts_melrose": ("MassGIS", "Mnih, 2013", "OpenStreetMap"),
}


def test_default_card_loads_strictly_and_credits_every_source():
    card = load_card(CARD)
    assert (card.name, card.version) == ("footprint_eo_lite0", "2.1")
    credits = " ".join(f"{d['source']} {d['credit']} {d['licence']}" for d in card.training_data)
    areas = card.extra["training"]["areas"]
    assert set(areas) == set(NEEDED), "a training area without a credit rule: add it to NEEDED"
    for area in areas:
        for credit in NEEDED[area]:
            assert credit in credits, f"{area} needs the credit {credit!r}"
    assert "ImageNet" in credits and card.extra["encoder_init"] == "ImageNet"
    assert "Massachusetts Buildings dataset (Mnih, 2013)" in card.licence
    assert not set(areas) & set(card.extra["training"]["test_areas"])  # held-out areas never trained on
    assert not any("joplin" in area for area in areas)
    model = load_model(card, torch.device("cpu"))  # checks the sha256 and loads weights_only
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
