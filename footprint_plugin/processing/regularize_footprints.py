"""footprint:regularizefootprints: square building outlines (dominant orientation, right angles)."""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
)

from .base import GROUP_VECTOR, FootprintAlgorithm, _field_type, from_qgs_geometry, to_qgs_geometry
from .compat import NUMBER_DOUBLE, SOURCE_POLYGON, WKB_MULTIPOLYGON


def metric_crs(source_crs: QgsCoordinateReferenceSystem, longitude: float, latitude: float) -> QgsCoordinateReferenceSystem:
    """The source CRS if it is projected, else the UTM zone at the given point (squaring needs metres)."""
    if source_crs.isValid() and not source_crs.isGeographic():
        return source_crs
    zone = min(max(int((longitude + 180) // 6) + 1, 1), 60)
    return QgsCoordinateReferenceSystem(f"EPSG:{32600 + zone if latitude >= 0 else 32700 + zone}")


class RegularizeFootprintsAlgorithm(FootprintAlgorithm):
    INPUT = "INPUT"
    TOLERANCE = "TOLERANCE"
    MIN_IOU = "MIN_IOU"
    OUTPUT = "OUTPUT"

    NAME = "regularizefootprints"
    DISPLAY_NAME = "Regularize building footprints"
    GROUP = GROUP_VECTOR
    HELP = (
        "Squares building outlines: edges snap to each building's dominant orientation and corners become right "
        "angles. Nearly rectangular outlines become rectangles; L, T and U shapes keep their shape. Round or "
        "irregular outlines, and any outline whose squared version would overlap the original by less than "
        "<b>Minimum IoU</b>, are kept as they are.\n\n<b>Tolerance</b> (metres, about one pixel) simplifies the "
        "outline before squaring. Layers in a geographic CRS are squared in their local UTM zone.\n"
        "All attributes are kept; a <b>regularized</b> field says which outlines changed."
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.INPUT, self.tr("Building polygons"), [SOURCE_POLYGON]
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TOLERANCE, self.tr("Tolerance (m)"), NUMBER_DOUBLE, 0.5, minValue=0.0
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_IOU, self.tr("Minimum IoU with the original"), NUMBER_DOUBLE, 0.8,
                minValue=0.0, maxValue=1.0,
            )
        )
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Regularized buildings"), SOURCE_POLYGON))
        self.addOutput(QgsProcessingOutputNumber("N_REGULARIZED", self.tr("Outlines squared")))

    def perform(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.regularize import regularize_polygon

        source = self.parameterAsSource(parameters, self.INPUT, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.INPUT))
        tolerance = self.parameterAsDouble(parameters, self.TOLERANCE, context)
        min_iou = self.parameterAsDouble(parameters, self.MIN_IOU, context)
        fields = QgsFields(source.fields())
        if fields.indexOf("regularized") < 0:
            fields.append(QgsField("regularized", _field_type("bool")))
        flag_index = fields.indexOf("regularized")
        source_crs = source.sourceCrs()
        center = source.sourceExtent().center()
        if source_crs.isGeographic():
            longitude, latitude = center.x(), center.y()
        else:
            to_wgs84 = QgsCoordinateTransform(source_crs, QgsCoordinateReferenceSystem("EPSG:4326"), context.transformContext())
            point = to_wgs84.transform(center) if source_crs.isValid() else center
            longitude, latitude = point.x(), point.y()
        work_crs = metric_crs(source_crs, longitude, latitude)
        forward = QgsCoordinateTransform(source_crs, work_crs, context.transformContext())
        backward = QgsCoordinateTransform(work_crs, source_crs, context.transformContext())
        reproject = source_crs.isValid() and work_crs != source_crs
        if not source_crs.isValid():
            feedback.pushWarning("The layer has no CRS; treating its coordinates as metres.")

        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, fields, WKB_MULTIPOLYGON, source_crs
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        total = max(source.featureCount(), 1)
        changed = 0
        for index, feature in enumerate(source.getFeatures()):
            if feedback.isCanceled():
                break
            out = QgsFeature(fields)
            attributes = feature.attributes() + [None] * (fields.count() - len(feature.attributes()))
            geometry = feature.geometry()
            flag = False
            if not geometry.isEmpty():
                if reproject:
                    geometry.transform(forward)
                squared, flag = regularize_polygon(from_qgs_geometry(geometry), tolerance=tolerance, min_iou=min_iou)
                geometry = to_qgs_geometry(squared)
                if reproject:
                    geometry.transform(backward)
            attributes[flag_index] = bool(flag)
            changed += int(flag)
            out.setGeometry(geometry)
            out.setAttributes(attributes)
            sink.addFeature(out, QgsFeatureSink.Flag.FastInsert)
            feedback.setProgress(100.0 * (index + 1) / total)
        feedback.pushInfo(f"Squared {changed} of {source.featureCount()} outlines.")
        return {self.OUTPUT: dest_id, "N_REGULARIZED": changed}
