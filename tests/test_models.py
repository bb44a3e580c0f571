"""Model registry, shapes, TernausNet key compatibility and conv-BN fusion."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from footprint_plugin.core.common.errors import ModelError
from footprint_plugin.core.models import ARCHITECTURES, create_model, fuse_conv_bn, list_architectures

torch.set_num_threads(1)  # the 2 cores are shared; oversubscribed OpenMP is very slow


def test_registry_lists_the_four_architectures():
    assert set(list_architectures()) == {
        "unet_vgg11",
        "unet_resnet34",
        "unet_mobilenetv2",
        "deeplabv3plus_resnet",
        "unet_efficientnet_lite0",
        "unet_efficientnet_lite1",
        "unet_efficientnet_lite2",
    }
    assert list_architectures() == list(ARCHITECTURES)


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ModelError) as info:
        create_model("unet_nope", 3, 1)
    for name in ARCHITECTURES:
        assert name in str(info.value)


@pytest.mark.parametrize("out_channels", [0, 2, 4])
def test_unsupported_head_count_is_a_model_error(out_channels):
    with pytest.raises(ModelError, match="out_channels"):
        create_model("unet_mobilenetv2", 3, out_channels)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("in_channels,out_channels", [(3, 1), (4, 3), (1, 1)])
def test_forward_shape_and_encoder(name, in_channels, out_channels):
    torch.manual_seed(0)
    model = create_model(name, in_channels, out_channels).eval()
    assert isinstance(model.encoder, torch.nn.Module)
    assert sum(p.numel() for p in model.encoder.parameters()) > 0
    with torch.inference_mode():
        out = model(torch.randn(2, in_channels, 64, 96))
    assert out.shape == (2, out_channels, 64, 96)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_fused_model_matches_unfused(name):
    torch.manual_seed(1)
    model = create_model(name, 3, 3)
    # Non-trivial BN statistics, as after training.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    model.eval()
    fused = fuse_conv_bn(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected, actual = model(x), fused(x)
    assert torch.allclose(expected, actual, atol=1e-4 * max(1.0, expected.abs().max().item()))


def test_fuse_refuses_train_mode():
    with pytest.raises(ModelError, match="eval"):
        fuse_conv_bn(create_model("unet_mobilenetv2", 3, 1))


def test_efficient_unet_weights_are_small():
    model = create_model("unet_mobilenetv2", 3, 3)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert buffer.tell() < 30e6 / 3  # well under 30 MB


# Derived from ternaus/TernausNet `UNet11` (models.py), which the SpaceNet 6 baseline trains on
# 4-channel SAR: VGG-11 `features` indices for the encoder convs, aliases conv1..conv5 sharing
# those parameters, DecoderBlock = Sequential(ConvRelu(conv), ConvTranspose2d, ReLU).
TERNAUS_UNET11_4CH_SHAPES = {
    "encoder.0.weight": (64, 4, 3, 3),
    "encoder.3.weight": (128, 64, 3, 3),
    "encoder.6.weight": (256, 128, 3, 3),
    "encoder.8.weight": (256, 256, 3, 3),
    "encoder.11.weight": (512, 256, 3, 3),
    "encoder.13.weight": (512, 512, 3, 3),
    "encoder.16.weight": (512, 512, 3, 3),
    "encoder.18.weight": (512, 512, 3, 3),
    "conv1.weight": (64, 4, 3, 3),
    "conv2.weight": (128, 64, 3, 3),
    "conv3s.weight": (256, 128, 3, 3),
    "conv3.weight": (256, 256, 3, 3),
    "conv4s.weight": (512, 256, 3, 3),
    "conv4.weight": (512, 512, 3, 3),
    "conv5s.weight": (512, 512, 3, 3),
    "conv5.weight": (512, 512, 3, 3),
    "center.block.0.conv.weight": (512, 512, 3, 3),
    "center.block.1.weight": (512, 256, 3, 3),
    "dec5.block.0.conv.weight": (512, 768, 3, 3),
    "dec5.block.1.weight": (512, 256, 3, 3),
    "dec4.block.0.conv.weight": (512, 768, 3, 3),
    "dec4.block.1.weight": (512, 128, 3, 3),
    "dec3.block.0.conv.weight": (256, 384, 3, 3),
    "dec3.block.1.weight": (256, 64, 3, 3),
    "dec2.block.0.conv.weight": (128, 192, 3, 3),
    "dec2.block.1.weight": (128, 32, 3, 3),
    "dec1.conv.weight": (32, 96, 3, 3),
    "final.weight": (1, 32, 1, 1),
    "final.bias": (1,),
}


def test_unet_vgg11_state_dict_matches_ternausnet_unet11():
    state = create_model("unet_vgg11", 4, 1).state_dict()
    weights = {k: tuple(v.shape) for k, v in state.items()}
    expected_weights = dict(TERNAUS_UNET11_4CH_SHAPES)
    # Every conv has a bias of its output width, as in torchvision VGG / TernausNet.
    for key, shape in TERNAUS_UNET11_4CH_SHAPES.items():
        if key.endswith(".weight"):
            bias_width = shape[1] if ".block.1." in key else shape[0]
            expected_weights[key[: -len("weight")] + "bias"] = (bias_width,)
    assert weights == expected_weights


def test_unet_vgg11_loads_a_ternausnet_style_state_dict():
    source = create_model("unet_vgg11", 4, 1).state_dict()
    target = create_model("unet_vgg11", 4, 1)
    target.load_state_dict(source, strict=True)
    assert torch.equal(target.conv1.weight, source["encoder.0.weight"])
    assert target.conv1.weight is target.encoder[0].weight


# ---------------------------------------------------------------------------------------------
# Safe loading and saving (core/zoo/weights.py)


def _card(name: str = "zoo_test", architecture: str = "unet_mobilenetv2", in_channels: int = 3):
    from footprint_plugin.core.zoo.modelcard import ModelCard

    return ModelCard(
        name=name,
        architecture=architecture,
        in_channels=in_channels,
        out_channels=1,
        band_roles=["b"] * in_channels,
    )


def test_save_then_load_round_trip(tmp_path):
    from footprint_plugin.core.zoo import weights as zoo
    from footprint_plugin.core.zoo.modelcard import load_card, sha256_file

    torch.manual_seed(0)
    model = create_model("unet_mobilenetv2", 3, 1)
    card_path = zoo.save_model(model, _card(), tmp_path)
    assert card_path == tmp_path / "zoo_test.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo_test.json", "zoo_test.pt"]
    card = load_card(card_path)
    assert card.sha256 == sha256_file(tmp_path / "zoo_test.pt")
    loaded = zoo.load_model(card)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module_prefix"])
def test_load_accepts_wrapped_checkpoints(tmp_path, wrap):
    from footprint_plugin.core.zoo import weights as zoo
    from footprint_plugin.core.zoo.modelcard import save_card, sha256_file

    state = create_model("unet_vgg11", 4, 1).state_dict()
    if wrap == "module_prefix":
        payload = {f"module.{k}": v for k, v in state.items()}
    else:
        payload = {wrap: state, "epoch": 3}
    torch.save(payload, tmp_path / "w.pt")
    card = _card(architecture="unet_vgg11", in_channels=4)
    card.weights_file, card.sha256 = "w.pt", sha256_file(tmp_path / "w.pt")
    save_card(card, tmp_path / "zoo_test.json")
    model = zoo.load_model(card)
    assert torch.equal(model.encoder[0].weight, state["encoder.0.weight"])


def test_load_rejects_tampered_missing_and_mismatched_weights(tmp_path):
    from footprint_plugin.core.zoo import weights as zoo
    from footprint_plugin.core.zoo.modelcard import save_card, sha256_file

    card = _card()
    zoo.save_model(create_model("unet_mobilenetv2", 3, 1), card, tmp_path)
    weights = tmp_path / card.weights_file
    original = weights.read_bytes()
    weights.write_bytes(original + b"x")
    with pytest.raises(ModelError, match="does not match its card"):
        zoo.load_model(card)
    weights.unlink()
    with pytest.raises(ModelError, match="not found"):
        zoo.load_model(card)
    # Right hash, wrong architecture: a key/shape mismatch names the problem.
    torch.save(create_model("unet_mobilenetv2", 4, 1).state_dict(), weights)
    card.sha256 = sha256_file(weights)
    save_card(card, tmp_path / "zoo_test.json")
    with pytest.raises(ModelError, match="do not fit the architecture"):
        zoo.load_model(card)


def test_load_never_unpickles_code(tmp_path):
    from footprint_plugin.core.zoo import weights as zoo
    from footprint_plugin.core.zoo.modelcard import save_card, sha256_file

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"payload": Evil()}, tmp_path / "evil.pt")
    card = _card()
    card.weights_file, card.sha256 = "evil.pt", sha256_file(tmp_path / "evil.pt")
    save_card(card, tmp_path / "zoo_test.json")
    with pytest.raises(ModelError, match="Cannot read the weights"):
        zoo.load_model(card)


@pytest.mark.parametrize("name", ["unet_mobilenetv2", "unet_resnet34", "unet_vgg11"])
def test_fused_conv_activation_matches(name):
    from footprint_plugin.core.models import FusedConvAct, fuse_conv_activation

    torch.manual_seed(2)
    model = create_model(name, 3, 1).eval()
    fused = fuse_conv_activation(fuse_conv_bn(copy.deepcopy(model)))
    n_fused = sum(isinstance(m, FusedConvAct) for m in fused.modules())
    if name == "unet_vgg11":
        assert n_fused == 0  # its convs are aliased (conv1 = encoder[0]) and called directly: left alone
    elif n_fused == 0:
        pytest.skip("this torch build has no fused oneDNN conv+activation")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        assert torch.allclose(fused(x), expected, atol=1e-4 * max(1.0, expected.abs().max().item()))
        bf16 = copy.deepcopy(fused).to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    assert (bf16 - expected).abs().mean() < 0.05 * expected.abs().mean() + 1e-3


@pytest.mark.parametrize("name", ["unet_vgg11", "unet_mobilenetv2"])
def test_reduced_precision_copy_keeps_the_input_layer_fp32(name):
    from footprint_plugin.core.models import Float32InputLayer, fuse_conv_activation, reduced_precision_copy

    torch.manual_seed(3)
    model = fuse_conv_activation(fuse_conv_bn(create_model(name, 3, 1).eval()))  # as inference prepares it
    half = reduced_precision_copy(model)
    wrappers = [m for m in half.modules() if isinstance(m, Float32InputLayer)]
    assert len(wrappers) == 1 and all(p.dtype == torch.float32 for p in wrappers[0].parameters())
    if name == "unet_vgg11":  # the aliased input conv is replaced under both of its names
        assert half.conv1 is half.encoder[0] is wrappers[0]
    others = [p for n, p in half.named_parameters() if not n.startswith(("module.", "encoder.0.", "conv1."))]
    assert any(p.dtype == torch.bfloat16 for p in others)
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected, actual = model(x), half(x).float()
    assert (actual - expected).abs().mean() < 0.05 * expected.abs().mean() + 1e-3
