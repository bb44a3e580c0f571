"""Squaring building outlines: rectangles, L-shapes, round and irregular shapes, holes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely import affinity

from footprint_plugin.core.polygons import _shapes_to_polygons
from footprint_plugin.core.regularize import dominant_orientation, regularize_polygon


def pixelated(shape, size=220):
    """The staircase outline a mask of `shape` gives after polygonizing, lightly simplified."""
    from rasterio.features import rasterize

    mask = rasterize([(affinity.translate(shape, 40, 40), 1)], out_shape=(size, size), dtype="int32")
    polygons, _ = _shapes_to_polygons(mask, 0, 0)
    return affinity.translate(max(polygons, key=lambda p: p.area).simplify(0.75), -40, -40)


def iou(a, b):
    return a.intersection(b).area / a.union(b).area


def corner_angles(polygon):
    coords = np.asarray(polygon.exterior.coords)[:-1]
    angles = []
    for i in range(len(coords)):
        a, b, c = coords[i - 1], coords[i], coords[(i + 1) % len(coords)]
        u, v = a - b, c - b
        angles.append(math.degrees(math.acos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v))))
    return angles


def test_rotated_rectangle_becomes_a_right_angled_rectangle():
    truth = affinity.rotate(shapely.box(30, 45, 100, 85), 23, origin="centroid")
    outline = pixelated(truth)
    squared, changed = regularize_polygon(outline)
    assert changed
    assert len(squared.exterior.coords) == 5
    assert corner_angles(squared) == pytest.approx([90.0] * 4, abs=0.01)
    assert math.degrees(dominant_orientation(squared)[0]) == pytest.approx(23, abs=1.5)
    assert iou(squared, truth) > iou(outline, truth) - 0.01
    assert squared.area == pytest.approx(outline.area, rel=0.01)


@pytest.mark.parametrize("angle", [0, -15, 40])
def test_l_shape_keeps_its_notch(angle):
    l_shape = shapely.Polygon([(20, 20), (110, 20), (110, 55), (60, 55), (60, 115), (20, 115)])
    truth = affinity.rotate(l_shape, angle, origin="centroid")
    squared, changed = regularize_polygon(pixelated(truth))
    assert changed
    assert len(squared.exterior.coords) == 7  # six corners: still an L
    assert corner_angles(squared) == pytest.approx([90.0] * 6, abs=0.01)
    assert iou(squared, truth) > 0.93


def test_round_and_irregular_buildings_are_left_alone():
    circle = pixelated(shapely.Point(70, 70).buffer(40))
    same, changed = regularize_polygon(circle)
    assert not changed and same is circle
    star = pixelated(shapely.Polygon([(70 + r * math.cos(t), 70 + r * math.sin(t))
                                      for t, r in zip(np.linspace(0, 2 * math.pi, 11)[:-1], [60, 25] * 5)]))
    assert regularize_polygon(star)[1] is False


def test_hole_is_kept_and_squared():
    ring = shapely.box(20, 20, 120, 100).difference(shapely.box(50, 40, 90, 80))
    truth = affinity.rotate(ring, 10, origin="centroid")
    squared, changed = regularize_polygon(pixelated(truth))
    assert changed and squared.is_valid
    assert len(squared.interiors) == 1
    assert iou(squared, truth) > 0.9


def test_degenerate_inputs():
    empty = shapely.Polygon()
    assert regularize_polygon(empty) == (empty, False)
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    assert regularize_polygon(bowtie)[1] is False
    assert dominant_orientation(empty) == (0.0, 0.0)


def test_multipolygon_parts_are_squared_separately():
    first = pixelated(affinity.rotate(shapely.box(10, 10, 60, 40), 20, origin="centroid"))
    second = pixelated(shapely.Point(120, 120).buffer(25))
    squared, changed = regularize_polygon(shapely.MultiPolygon([first, second]))
    assert changed and squared.geom_type == "MultiPolygon" and len(squared.geoms) == 2
    assert len(squared.geoms[0].exterior.coords) == 5
    assert squared.geoms[1].equals(second)
