"""Squaring building outlines: rectangles, L-shapes, round and irregular shapes, holes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from shapely import affinity

from footprint_plugin.core.vectors.polygons import _shapes_to_polygons
from footprint_plugin.core.vectors.regularize import dominant_orientation, regularize_polygon


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
    star = pixelated(
        shapely.Polygon(
            [
                (70 + r * math.cos(t), 70 + r * math.sin(t))
                for t, r in zip(np.linspace(0, 2 * math.pi, 11)[:-1], [60, 25] * 5)
            ]
        )
    )
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


# --------------------------------------------------------------------------- the Processing algorithm


@pytest.fixture
def footprint_provider(qgis_processing):
    from qgis.core import QgsApplication

    from footprint_plugin.processing.provider import FootprintProvider

    registry = QgsApplication.processingRegistry()
    provider = FootprintProvider()
    assert registry.addProvider(provider)
    yield provider
    registry.removeProvider(provider)


def polygon_layer(polygons, crs="EPSG:32631", fields=("name",)):
    """A memory layer of shapely polygons (in metres around 600 km E, 5750 km N for UTM 31N)."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsVectorLayer

    uri = (
        "MultiPolygon"
        + (f"?crs={crs}" if crs else "")
        + "".join(("&" if crs or i else "?") + f"field={name}:string" for i, name in enumerate(fields))
    )
    layer = QgsVectorLayer(uri, "buildings", "memory")
    assert layer.isValid(), uri
    if not crs:  # memory layers default to EPSG:4326
        layer.setCrs(QgsCoordinateReferenceSystem())
    features = []
    for number, polygon in enumerate(polygons):
        feature = QgsFeature(layer.fields())
        feature.setAttributes([f"b{number}"])
        feature.setGeometry(QgsGeometry.fromWkt(affinity.translate(polygon, 600000, 5750000).wkt))
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    return layer


def rotated_box_and_circle():
    return [
        pixelated(affinity.rotate(shapely.box(30, 45, 100, 85), 23, origin="centroid")),
        pixelated(shapely.Point(70, 70).buffer(40)),
    ]


def test_algorithm_is_feature_based_and_squares_a_memory_layer(footprint_provider, tmp_path):
    import processing
    from qgis.core import QgsApplication, QgsProcessingFeatureBasedAlgorithm, QgsVectorLayer

    algorithm = QgsApplication.processingRegistry().algorithmById("footprint:regularizefootprints")
    assert isinstance(algorithm, QgsProcessingFeatureBasedAlgorithm)
    assert [p.name() for p in algorithm.parameterDefinitions()] == ["INPUT", "TOLERANCE", "MIN_IOU", "OUTPUT"]
    source = polygon_layer(rotated_box_and_circle())
    results = processing.run("footprint:regularizefootprints", {"INPUT": source, "OUTPUT": str(tmp_path / "sq.gpkg")})
    out = QgsVectorLayer(str(results["OUTPUT"]), "sq", "ogr")
    assert out.isValid() and out.crs().authid() == "EPSG:32631"
    features = {f["name"]: f for f in out.getFeatures()}
    assert set(features) == {"b0", "b1"} and results["N_REGULARIZED"] == 1
    box, circle = features["b0"], features["b1"]
    assert box["regularized"] and not circle["regularized"]
    squared = shapely.from_wkt(box.geometry().asWkt())
    assert len(squared.geoms[0].exterior.coords) == 5
    assert corner_angles(squared.geoms[0]) == pytest.approx([90.0] * 4, abs=0.01)


def test_in_place_edit_squares_the_selected_features_only(footprint_provider):
    from processing.gui.AlgorithmExecutor import execute_in_place_run
    from qgis.core import QgsApplication, QgsProject

    layer = polygon_layer(rotated_box_and_circle() + [pixelated(affinity.rotate(shapely.box(120, 120, 180, 160), 30))])
    QgsProject.instance().addMapLayer(layer)
    try:
        before = {f["name"]: shapely.from_wkt(f.geometry().asWkt()) for f in layer.getFeatures()}
        layer.selectByExpression("\"name\" in ('b0', 'b1')")
        algorithm = QgsApplication.processingRegistry().createAlgorithmById("footprint:regularizefootprints")
        assert algorithm.supportInPlaceEdit(layer)
        ok, _ = execute_in_place_run(algorithm, {"INPUT": layer}, raise_exceptions=True)
        assert ok and layer.commitChanges()
        after = {f["name"]: shapely.from_wkt(f.geometry().asWkt()) for f in layer.getFeatures()}
        assert layer.fields().names() == ["name"]  # the regularized flag has no place in this layer
        assert len(after["b0"].geoms[0].exterior.coords) == 5  # squared
        assert after["b1"].equals(before["b1"])  # round: left alone
        assert after["b2"].equals(before["b2"])  # not selected
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def test_layer_without_crs_is_squared_in_its_own_units(footprint_provider):
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    class Warnings(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.messages = []

        def pushWarning(self, text):
            self.messages.append(text)

    feedback = Warnings()
    results = processing.run(
        "footprint:regularizefootprints",
        {"INPUT": polygon_layer(rotated_box_and_circle(), crs=None), "OUTPUT": "memory:"},
        context=QgsProcessingContext(),
        feedback=feedback,
    )
    assert results["N_REGULARIZED"] == 1 and results["OUTPUT"].featureCount() == 2
    assert any("no CRS" in message for message in feedback.messages)
