"""The same pixels give the same buildings on any extent (issue 20): the whole raster, a window, a mask, batch blocks.

The scaling statistics are the whole layer's and the tile grid is anchored at the raster's first pixel, so
a window's probabilities are the whole raster's there; only buildings cut by the window's edge differ.
Real imagery (Kampala at 0.3 m, resampled to the default model's 0.5 m; Joplin at its own grid), the
default model, fp32 (the comparison is about the grid and statistics, not precision).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from footprint_plugin.core.engine.inference import InferenceOptions, predict_raster
from footprint_plugin.core.engine.pipeline import detect_buildings
from footprint_plugin.core.engine.planning import pixel_window
from footprint_plugin.core.io.raster_io import read_probability
from footprint_plugin.core.zoo.modelcard import default_model_name, find_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eo"
KAMPALA = DATA / "hotosm_kampala" / "mosaic_z19.vrt"
JOPLIN = DATA / "xview2_joplin_pre" / "mosaic.vrt"
FP32 = dict(device="cpu", precision="fp32")

pytestmark = pytest.mark.skipif(not KAMPALA.exists(), reason="the shared data pack is not here")


@pytest.fixture(scope="module")
def card():
    return find_model(default_model_name("EO"))


def _crop(source: Path, target: Path, window: tuple[int, int, int, int]) -> Path:
    """A GeoTIFF of part of a data-pack raster (its mask kept), small enough for a quick test."""
    from osgeo import gdal

    gdal.UseExceptions()
    gdal.Translate(str(target), str(source), srcWin=list(window), creationOptions=["TILED=YES"])
    return target


@pytest.fixture(scope="module")
def kampala(tmp_path_factory) -> Path:
    """1600 x 1000 px of Kampala at 0.3 m: 960 x 600 model pixels, 2 x 2 tiles of the default model."""
    return _crop(KAMPALA, tmp_path_factory.mktemp("kampala") / "kampala.tif", (500, 150, 1600, 1000))


def _window_of(path: Path, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    prob, valid, _heads = read_probability(path)
    col, row, width, height = window
    return prob[:, row : row + height, col : col + width], valid[row : row + height, col : col + width]


def _inside(geometries, bounds, margin: float) -> list:
    """The geometries at least `margin` (CRS units) inside bounds (xmin, ymin, xmax, ymax)."""
    from shapely.geometry import box

    interior = box(bounds[0] + margin, bounds[1] + margin, bounds[2] - margin, bounds[3] - margin)
    return [g for g in geometries if interior.contains(g)]


def _same_buildings(expected: list, found: list) -> bool:
    """Every expected building has one in `found` covering the same ground (IoU > 0.99)."""
    return all(any(e.intersection(f).area / e.union(f).area > 0.99 for f in found) for e in expected)


def test_a_window_gets_the_whole_rasters_probabilities(card, kampala, tmp_path):
    window = (411, 187, 703, 511)  # not on a tile or block boundary, in input pixels (resampled by 0.6)
    options = InferenceOptions(**FP32, output_dtype="float32")
    full = predict_raster(kampala, card, tmp_path / "full.tif", options)
    part = predict_raster(
        kampala, card, tmp_path / "part.tif", InferenceOptions(**FP32, output_dtype="float32", window=window)
    )
    assert full.resampled and part.resampled and (part.width, part.height) == window[2:]
    expected, expected_valid = _window_of(full.probability_path, window)
    got, got_valid, _heads = read_probability(part.probability_path)
    assert np.array_equal(got_valid, expected_valid)
    assert np.abs(got - expected)[:, got_valid].max() < 1e-4
    assert part.stats == full.stats  # the whole layer's statistics, not the window's


def test_full_raster_window_and_mask_give_the_same_buildings_in_the_overlap(card, kampala, tmp_path):
    import rasterio
    from shapely.geometry import Polygon

    with rasterio.open(kampala) as ds:
        left, top = ds.transform * (200, 100)
        right, bottom = ds.transform * (1400, 1000)
    extent = (left, bottom, right, top)
    window = pixel_window(kampala, extent)
    # A mask is a polygon: the algorithm runs on its bounding window and keeps what touches it.
    mask = Polygon([(left, bottom), (right, bottom), (left + 0.5 * (right - left), top)])
    mask_window = pixel_window(kampala, mask.bounds)
    full = detect_buildings(kampala, None, card, inference_options=InferenceOptions(**FP32))
    cut = detect_buildings(kampala, None, card, inference_options=InferenceOptions(**FP32, window=window))
    masked = detect_buildings(kampala, None, card, inference_options=InferenceOptions(**FP32, window=mask_window))
    masked_kept = [g for g in masked.geometries if g.intersects(mask)]
    margin = card.overlap * card.gsd_m  # one tile margin (the blend overlap), in metres = CRS units here
    expected = _inside(full.geometries, extent, margin)
    assert len(expected) >= 10, "the test area should hold buildings"
    assert _same_buildings(expected, cut.geometries)
    assert _same_buildings(_inside(cut.geometries, extent, margin), full.geometries)
    expected_in_mask = [g for g in expected if g.intersects(mask)]
    assert _same_buildings(expected_in_mask, masked_kept)


def test_batch_blocks_match_detect(card, tmp_path):
    """A raster run as batch blocks (cores of 448 px, the model's stride) gives detect's probabilities."""
    from footprint_plugin.core.batch.runner import BatchOptions, run_batch

    crop = _crop(JOPLIN, tmp_path / "joplin.tif", (300, 200, 1000, 1000))  # 2 x 2 blocks of 448 px cores
    detect = detect_buildings(
        crop, None, card, probability_path=tmp_path / "detect.tif", inference_options=InferenceOptions(**FP32)
    )
    options = BatchOptions(workers=0, block_size=448, probability_dir=tmp_path / "blocks", job_dir=tmp_path / "job")
    batch = run_batch([crop], None, card, InferenceOptions(**FP32), None, options)
    assert batch.blocks_run >= 4
    expected, expected_valid, _ = read_probability(detect.probability_path)
    got, got_valid, _ = read_probability(batch.probability_paths[0])
    assert np.array_equal(got_valid, expected_valid)
    assert np.abs(got - expected).max() <= 1 / 254 + 1e-6  # uint8 outputs: at most one step apart
    assert detect.n_buildings == batch.n_buildings
