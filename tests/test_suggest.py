"""Where to digitize next: cells ranked by uncertainty and variety, labelled cells left out."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from footprint_plugin.core.common.errors import InputError
from footprint_plugin.core.learning.suggest import cell_grid, rank_cells, suggest_cells, uncertainty_of

GSD = 0.5
CELL_PX = 120  # 60 m cells at 0.5 m
ORIGIN = (500_000.0, 4_000_000.0)


def _cell_box(row: int, col: int) -> shapely.Polygon:
    x0 = ORIGIN[0] + col * CELL_PX * GSD
    y1 = ORIGIN[1] - row * CELL_PX * GSD
    return shapely.box(x0, y1 - CELL_PX * GSD, x0 + CELL_PX * GSD, y1)


@pytest.fixture
def probability_raster(tmp_path):
    """5 x 5 cells of confident background and buildings, with three uncertain cells."""
    rng = np.random.default_rng(0)
    probability = np.where(rng.random((600, 600)) < 0.2, 0.97, 0.02).astype(np.float32)
    for row, col, value in ((1, 1, 0.5), (3, 3, 0.45), (0, 4, 0.6)):
        probability[row * CELL_PX : (row + 1) * CELL_PX, col * CELL_PX : (col + 1) * CELL_PX] = value
    probability[4 * CELL_PX :, 0:CELL_PX] = np.nan  # a cell without imagery
    path = tmp_path / "probability.tif"
    profile = dict(driver="GTiff", width=600, height=600, count=1, dtype="float32", crs="EPSG:32616")
    with rasterio.open(path, "w", transform=from_origin(*ORIGIN, GSD, GSD), **profile) as dataset:
        dataset.write(probability, 1)
    return path


def test_uncertainty_peaks_at_the_threshold():
    values = uncertainty_of(np.array([0.0, 0.3, 0.5, 0.7, 1.0]), 0.5)
    assert values.tolist() == pytest.approx([0.0, 0.6, 1.0, 0.6, 0.0])
    assert uncertainty_of(np.array([0.3]), 0.3)[0] == pytest.approx(1.0)


def test_uncertain_cells_rank_first_and_labelled_cells_are_excluded(probability_raster):
    grid = cell_grid(probability_raster, 60.0, threshold=0.5)
    assert (grid.rows, grid.cols, grid.cell_px) == (5, 5, CELL_PX)
    assert np.isnan(grid.uncertainty[4, 0])  # no imagery: never suggested
    cells = rank_cells(grid, max_cells=25)
    assert {(c.row, c.col) for c in cells[:3]} == {(1, 1), (3, 3), (0, 4)}
    assert [c.rank for c in cells] == list(range(1, len(cells) + 1))
    assert (4, 0) not in {(c.row, c.col) for c in cells}
    # The cell digitized last round (3, 3) is left out; the other uncertain cells still lead.
    labelled = [_cell_box(3, 3).buffer(-5)]
    cells = suggest_cells(probability_raster, 60.0, 0.5, labelled=labelled, max_cells=10)
    assert (3, 3) not in {(c.row, c.col) for c in cells}
    assert {(c.row, c.col) for c in cells[:2]} == {(1, 1), (0, 4)}
    assert cells[0].geometry.equals(_cell_box(cells[0].row, cells[0].col))


def test_variety_breaks_ties_between_look_alike_cells(probability_raster):
    """Two equally uncertain cells: the one unlike the labelled cell comes first."""
    grid = cell_grid(probability_raster, 60.0, threshold=0.5)
    grid.uncertainty[:] = 0.5
    grid.features[:] = 0.0
    grid.features[2, 2] = 5.0  # looks unlike every other cell
    grid.features[0, 0] = 0.0
    cells = rank_cells(grid, labelled=[_cell_box(0, 0).buffer(-5)], max_cells=3)
    assert (cells[0].row, cells[0].col) == (2, 2)
    assert cells[0].variety == pytest.approx(1.0)


def test_detections_are_counted_and_bad_sizes_refused(probability_raster):
    house = _cell_box(1, 1).centroid.buffer(4)
    cells = suggest_cells(probability_raster, 60.0, 0.5, detections=[house], max_cells=3)
    counts = {(c.row, c.col): c.detections for c in cells}
    assert counts[(1, 1)] == 1 and sum(counts.values()) == 1
    with pytest.raises(InputError, match="cell size"):
        cell_grid(probability_raster, 0.0)
    with pytest.raises(InputError, match="variety weight"):
        rank_cells(cell_grid(probability_raster), variety_weight=2.0)


def test_processing_algorithm_writes_ranked_styled_cells(provider, probability_raster, tmp_path):
    """footprint:suggestcells through Processing: ranked cells, the labelled one left out, styled by rank."""
    import processing
    from qgis.core import QgsProject, QgsVectorLayer

    from footprint_plugin.core.io.vector_io import write_polygons

    labelled = write_polygons(tmp_path / "done.gpkg", [_cell_box(3, 3).buffer(-5)], [{}], "EPSG:32616")
    results = processing.runAndLoadResults(
        "footprint:suggestcells",
        {
            "PROBABILITY": str(probability_raster),
            "LABELLED": str(labelled),
            "CELL_SIZE": 60.0,
            "MAX_CELLS": 5,
            "OUTPUT": str(tmp_path / "cells.gpkg"),
        },
    )
    assert results["N_CELLS"] == 5
    layer = QgsVectorLayer(str(tmp_path / "cells.gpkg"), "cells", "ogr")
    features = sorted(layer.getFeatures(), key=lambda f: f["rank"])
    assert [f["rank"] for f in features] == [1, 2, 3, 4, 5]
    assert features[0]["uncertainty"] >= features[-1]["uncertainty"]
    assert abs(features[0].geometry().area() - 3600.0) < 1.0  # 60 m squares
    centres = [(f.geometry().centroid().asPoint().x(), f.geometry().centroid().asPoint().y()) for f in features]
    assert all(not _cell_box(3, 3).contains(shapely.Point(c)) for c in centres)
    loaded = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name().startswith("Where to digitize")]
    assert loaded and loaded[0].renderer().type() == "graduatedSymbol"
    assert loaded[0].renderer().classAttribute() == "rank"
    QgsProject.instance().removeMapLayers([lyr.id() for lyr in loaded])
