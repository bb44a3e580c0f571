"""Instance geometry on synthetic probability maps: one roof gives one outline, touching roofs split at the contact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rasterio.transform import from_origin
from scipy import ndimage

from footprint_plugin.core.common.errors import InputError
from footprint_plugin.core.vectors.instances import merge_pieces
from footprint_plugin.core.vectors.polygons import PolygonOptions, polygonize_array

UTM = "EPSG:32631"
TRANSFORM = from_origin(600000.0, 5750000.0, 0.5, 0.5)
LEGACY = dict(merge_max_contact=None, merge_max_boundary=None)  # v2.0's post-processing: never rejoin pieces


def heads(footprint: np.ndarray, boundary: np.ndarray, contact: np.ndarray) -> np.ndarray:
    return np.stack([footprint, boundary, contact]).astype(np.float32)


def gabled_roof():
    """One 40 m x 30 m roof whose ridge the model reads as a weak edge: two confident halves, one building."""
    footprint = np.zeros((120, 160), np.float32)
    footprint[20:100, 20:80] = 0.95
    footprint[58:62, 20:80] = 0.6  # the ridge: still roof, below the seed threshold
    boundary = np.zeros_like(footprint)
    boundary[58:62, 20:80] = 0.5  # a weak edge along the ridge
    for r0, r1, c0, c1 in ((20, 100, 20, 80),):
        boundary[r0 : r0 + 3, c0:c1] = boundary[r1 - 3 : r1, c0:c1] = 0.8
        boundary[r0:r1, c0 : c0 + 3] = boundary[r0:r1, c1 - 3 : c1] = 0.8
    return footprint, boundary, np.zeros_like(footprint)


def test_fragments_of_one_roof_merge():
    footprint, boundary, contact = gabled_roof()
    prob = heads(footprint, boundary, contact)
    legacy = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(**LEGACY))
    assert len(legacy.geometries) == 2  # v2.0's watershed cut the roof at its ridge
    merged = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions())
    assert len(merged.geometries) == 1
    assert merged.attributes[0]["area_m2"] == pytest.approx(40 * 30, rel=0.03)


def test_two_touching_roofs_split_at_the_contact():
    footprint, boundary, contact = gabled_roof()
    contact[58:62, 20:80] = 0.8  # the same line, now read as two roofs touching
    split = polygonize_array(heads(footprint, boundary, contact), TRANSFORM, UTM, PolygonOptions())
    assert len(split.geometries) == 2
    top, bottom = sorted(split.geometries, key=lambda g: -g.centroid.y)
    assert top.bounds[1] == pytest.approx(5750000.0 - 30.0, abs=1.0)  # the cut lies on the contact line
    assert bottom.bounds[3] == pytest.approx(5750000.0 - 30.0, abs=1.0)


def test_a_strong_outline_between_roofs_keeps_them_apart_without_contact():
    footprint, boundary, contact = gabled_roof()
    boundary[58:62, 20:80] = 0.9  # a clear wall line: the boundary head alone says two buildings
    assert len(polygonize_array(heads(footprint, boundary, contact), TRANSFORM, UTM, PolygonOptions()).geometries) == 2


def test_merge_pieces_joins_long_low_contact_borders_only():
    labels = np.zeros((40, 60), np.int32)
    labels[5:35, 5:30] = 1
    labels[5:35, 30:55] = 2  # a long shared border
    contact = np.zeros(labels.shape, np.float32)
    assert set(np.unique(merge_pieces(labels, [(contact, 0.3)]))) == {0, 1}
    contact[:, 28:32] = 0.9
    assert set(np.unique(merge_pieces(labels, [(contact, 0.3)]))) == {0, 1, 2}
    bridge = np.zeros((40, 60), np.int32)
    bridge[5:35, 5:28] = 1
    bridge[5:35, 32:55] = 2
    bridge[19:21, 28:30] = 1  # two houses joined by a two-pixel bridge: a short border
    bridge[19:21, 30:32] = 2
    assert set(np.unique(merge_pieces(bridge, [(np.zeros(labels.shape, np.float32), 0.3)]))) == {0, 1, 2}


def test_blocks_give_the_same_merged_buildings():
    footprint, boundary, contact = gabled_roof()
    prob = heads(footprint, boundary, contact)
    whole = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions())
    blocks = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(block_size=64, overlap=64))
    assert len(blocks.geometries) == len(whole.geometries) == 1
    assert blocks.geometries[0].symmetric_difference(whole.geometries[0]).area < 1.0


def test_holes_inside_a_roof_are_filled_below_the_hole_area():
    footprint, boundary, contact = gabled_roof()
    footprint[30:36, 30:36] = 0.1  # 9 m² dark patch: a hole under 10 m²
    footprint[70:84, 40:60] = 0.1  # 70 m² courtyard: kept unless asked
    prob = heads(footprint, boundary, contact)
    kept = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions())
    assert [len(g.interiors) for g in kept.geometries] == [1]
    filled = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(hole_area_m2=100.0))
    assert [len(g.interiors) for g in filled.geometries] == [0]


def _angles(polygon) -> list[float]:
    coords = np.asarray(polygon.exterior.coords)[:-1]
    out = []
    for i in range(len(coords)):
        a, b = coords[i - 1] - coords[i], coords[(i + 1) % len(coords)] - coords[i]
        out.append(math.degrees(math.acos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))
    return out


@pytest.mark.parametrize("angle", [0.0, 17.0, 38.0])
def test_rectilinear_shapes_snap_to_right_angles(angle):
    rows, cols = np.mgrid[:240, :240]
    u = (cols - 120) * np.cos(np.radians(angle)) + (rows - 120) * np.sin(np.radians(angle))
    v = -(cols - 120) * np.sin(np.radians(angle)) + (rows - 120) * np.cos(np.radians(angle))
    rectangle = (np.abs(u) < 40) & (np.abs(v) < 24)
    ell = ((np.abs(u) < 60) & (np.abs(v) < 20)) | ((u > 20) & (u < 60) & (v > -20) & (v < 60))
    for mask, corners in ((rectangle, 4), (ell, 6)):
        prob = ndimage.gaussian_filter(mask.astype(np.float32), 1.5)  # soft edges like a model's output
        result = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(regularize=True))
        assert len(result.geometries) == 1 and result.attributes[0]["regularized"]
        polygon = result.geometries[0]
        assert len(polygon.exterior.coords) - 1 == corners
        assert all(a == pytest.approx(90, abs=1.0) for a in _angles(polygon))
        assert polygon.area == pytest.approx(mask.sum() * 0.25, rel=0.05)


def test_growth_and_merge_options_are_checked():
    with pytest.raises(InputError, match="grow_threshold"):
        PolygonOptions(threshold=0.5, grow_threshold=0.6).validate()
    with pytest.raises(InputError, match="merge_max_contact"):
        PolygonOptions(merge_max_contact=1.5).validate()


def test_growth_extends_roofs_to_the_lower_threshold():
    footprint = np.zeros((100, 100), np.float32)
    footprint[20:80, 20:80] = 0.45  # the roof's rim, under the 0.5 threshold
    footprint[26:74, 26:74] = 0.9  # its confident core
    prob = heads(footprint, np.zeros_like(footprint), np.zeros_like(footprint))
    plain = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions())
    grown = polygonize_array(prob, TRANSFORM, UTM, PolygonOptions(grow_threshold=0.4))
    assert plain.attributes[0]["area_m2"] == pytest.approx(24 * 24, rel=0.02)
    assert grown.attributes[0]["area_m2"] == pytest.approx(30 * 30, rel=0.02)
