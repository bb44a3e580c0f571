"""The reduced-precision gate (core/engine/precision.py): bf16 where it gives fp32's buildings, fp32 where it does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_buildings

from footprint_plugin.core.engine.device import cpu_supports_bf16
from footprint_plugin.core.engine.inference import InferenceOptions, predict_raster
from footprint_plugin.core.engine.precision import (
    BF16_FALLBACK_WARNING,
    BF16_MIN_BUILDING_F1,
    compare_outputs,
    matched_instances,
)
from footprint_plugin.core.zoo.modelcard import ModelCard

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16 (AVX512_BF16 or AMX)")


class Brightness(torch.nn.Module):
    """Bright pixels are buildings: a smooth function of the input, stable in bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(30.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=1, keepdim=True) - 0.5) * self.gain


class Fragile(Brightness):
    """The same network with one layer that only fp32 computes correctly: it adds and removes a large
    offset, which bf16 (8 significant bits) cannot represent, so its rounding error decides the mask."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(300.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = super().forward(x.to(self.gain.dtype))
        lost = (logit * 0.37 + self.offset) - self.offset - logit * 0.37  # 0 in fp32; up to +-1 in bf16
        return logit + lost * 200.0


def _card() -> ModelCard:
    return ModelCard(
        name="gate_test",
        architecture="unet_mobilenetv2",
        in_channels=3,
        out_channels=1,
        band_roles=["red", "green", "blue"],
        scaling={"method": "divide", "value": 255.0},
        tile_size=128,
        overlap=32,
        heads=["footprint"],
        tta="none",
    )


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    from conftest import write_geotiff

    image = synthetic_buildings(400, seed=3)[0]
    return write_geotiff(tmp_path_factory.mktemp("gate") / "roofs.tif", image)


@needs_bf16
def test_the_gate_chooses_bf16_where_it_gives_the_same_buildings(raster, tmp_path):
    result = predict_raster(raster, _card(), tmp_path / "p.tif", InferenceOptions(precision="auto"), model=Brightness())
    assert result.precision == "bf16"
    assert not any(w.startswith(BF16_FALLBACK_WARNING) for w in result.warnings)


@needs_bf16
def test_the_gate_keeps_fp32_where_a_layer_diverges_in_bf16(raster, tmp_path):
    result = predict_raster(raster, _card(), tmp_path / "p.tif", InferenceOptions(precision="auto"), model=Fragile())
    assert result.precision == "fp32"
    assert BF16_FALLBACK_WARNING in result.warnings
    # The fp32 run of the fragile network is the plain one: the layer is harmless in full precision.
    plain = predict_raster(raster, _card(), tmp_path / "b.tif", InferenceOptions(precision="fp32"), model=Brightness())
    from footprint_plugin.core.io.raster_io import read_probability

    a, _, _ = read_probability(tmp_path / "p.tif")
    b, _, _ = read_probability(plain.probability_path)
    assert np.abs(a - b).max() <= 1 / 254 + 1e-6


@needs_bf16
def test_the_gate_is_used_once_and_its_fp32_tiles_are_kept(raster, tmp_path):
    """Sampled tiles run in fp32 during the check are written as they are: the output of a forced fp32 run."""
    from footprint_plugin.core.io.raster_io import read_probability

    options = InferenceOptions(precision="auto", output_dtype="float32")
    auto = predict_raster(raster, _card(), tmp_path / "a.tif", options, model=Fragile())
    fp32 = predict_raster(
        raster, _card(), tmp_path / "f.tif", InferenceOptions(precision="fp32", output_dtype="float32"), model=Fragile()
    )
    assert auto.precision == "fp32" and auto.timings["precision check"] > 0
    assert np.array_equal(read_probability(tmp_path / "a.tif")[0], read_probability(fp32.probability_path)[0])


def test_buildings_are_matched_one_to_one_at_iou_half():
    reference = np.zeros((60, 60), np.int32)
    reference[5:15, 5:15] = 1
    reference[30:40, 30:40] = 2
    reference[50:52, 50:52] = 3  # 4 px: below the size the polygons keep
    candidate = np.zeros_like(reference)
    candidate[5:15, 6:16] = 7  # shifted a pixel: IoU 90/110
    candidate[30:33, 30:40] = 8  # a third of building 2: no match
    assert matched_instances(reference, candidate, min_pixels=5) == (1, 2, 2)


def test_object_agreement_counts_buildings_not_probability_noise():
    heads = ["footprint"]
    reference = np.zeros((1, 64, 64), np.float32)
    for r in range(0, 64, 16):
        reference[0, r + 2 : r + 12, 2:12] = 0.9
    noisy = reference + np.float32(0.04)  # every probability moves, no building changes
    same = compare_outputs([reference], [noisy], heads, 0.5, 0.5, 5)
    assert same.passes and same.building_f1 == 1.0 and same.buildings == 4
    lost = reference.copy()
    lost[0, 2:12, 2:12] = 0.2  # one of four buildings gone
    changed = compare_outputs([reference], [lost], heads, 0.5, 0.5, 5)
    assert not changed.passes and changed.building_f1 == pytest.approx(6 / 7)
    assert changed.building_f1 < BF16_MIN_BUILDING_F1
