"""footprint:regularizefootprints: square building outlines (dominant orientation, right angles).

A QgsProcessingFeatureBasedAlgorithm: QGIS runs the feature loop (progress, cancel, invalid-geometry
handling, sink) and offers the algorithm for in-place editing of a layer's selected features; this
module only says how one feature changes.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsFields,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeatureBasedAlgorithm,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterNumber,
)

from .base import GROUP_VECTOR, FootprintAlgorithm, from_qgs_geometry, make_fields, to_qgs_geometry
from .compat import NUMBER_DOUBLE, SOURCE_POLYGON, WKB_MULTIPOLYGON

FLAG_FIELD = "regularized"


def metric_crs(
    source_crs: QgsCoordinateReferenceSystem, longitude: float, latitude: float
) -> QgsCoordinateReferenceSystem:
    """The source CRS if it is projected, else the UTM zone at the given point (squaring needs metres)."""
    if source_crs.isValid() and not source_crs.isGeographic():
        return source_crs
    from ..core.common.geometry import utm_crs_for  # engine import inside: the provider loads without shapely

    return QgsCoordinateReferenceSystem(utm_crs_for(longitude, latitude))


class RegularizeFootprintsAlgorithm(QgsProcessingFeatureBasedAlgorithm):
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
        "All attributes are kept; a <b>regularized</b> field says which outlines changed. The algorithm also "
        "edits a layer's selected features in place (Processing toolbox, Edit Features In-Place)."
    )

    # Names, groups, icon, help and the dependency check are the ones every footprint algorithm uses.
    name = FootprintAlgorithm.name
    displayName = FootprintAlgorithm.displayName
    group = FootprintAlgorithm.group
    groupId = FootprintAlgorithm.groupId
    shortHelpString = FootprintAlgorithm.shortHelpString
    icon = FootprintAlgorithm.icon
    tr = FootprintAlgorithm.tr
    canExecute = FootprintAlgorithm.canExecute

    def __init__(self) -> None:
        super().__init__()
        self._tolerance = 0.5
        self._min_iou = 0.8
        self._forward: QgsCoordinateTransform | None = None
        self._backward: QgsCoordinateTransform | None = None
        self._fields: QgsFields | None = None
        self._changed = 0
        self._seen = 0

    def createInstance(self) -> RegularizeFootprintsAlgorithm:
        return type(self)()

    # ------------------------------------------------------------------ what QGIS asks a feature algorithm

    def inputLayerTypes(self) -> list[int]:
        return [SOURCE_POLYGON]

    def inputParameterDescription(self) -> str:
        return self.tr("Building polygons")

    def outputName(self) -> str:
        return self.tr("Regularized buildings")

    def outputLayerType(self) -> int:
        return SOURCE_POLYGON

    def outputWkbType(self, input_wkb_type: int) -> int:
        # Squaring a MultiPolygon squares each part, so every output is multi-part (as before).
        return WKB_MULTIPOLYGON

    def outputFields(self, input_fields: QgsFields) -> QgsFields:
        fields = QgsFields(input_fields)
        if fields.indexOf(FLAG_FIELD) < 0:
            fields.append(make_fields([(FLAG_FIELD, "bool")]).at(0))
        # QGIS asks once before the feature loop (also for in-place edits); processFeature reuses the answer.
        self._fields = fields
        return fields

    def initParameters(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterNumber(self.TOLERANCE, self.tr("Tolerance (m)"), NUMBER_DOUBLE, 0.5, minValue=0.0)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_IOU,
                self.tr("Minimum IoU with the original"),
                NUMBER_DOUBLE,
                0.8,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self.addOutput(QgsProcessingOutputNumber("N_REGULARIZED", self.tr("Outlines squared")))

    # ------------------------------------------------------------------ running

    def prepareAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> bool:
        ok, message = self.canExecute()
        if not ok:
            raise QgsProcessingException(message)
        source = self.parameterAsSource(parameters, self.INPUT, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.INPUT))
        self._tolerance = self.parameterAsDouble(parameters, self.TOLERANCE, context)
        self._min_iou = self.parameterAsDouble(parameters, self.MIN_IOU, context)
        self._changed = self._seen = 0
        self._forward = self._backward = None
        source_crs = source.sourceCrs()
        if not source_crs.isValid():
            feedback.pushWarning("The layer has no CRS; treating its coordinates as metres.")
            return True
        center = source.sourceExtent().center()
        if not source_crs.isGeographic():
            to_wgs84 = QgsCoordinateTransform(
                source_crs, QgsCoordinateReferenceSystem("EPSG:4326"), context.transformContext()
            )
            center = to_wgs84.transform(center)
        work_crs = metric_crs(source_crs, center.x(), center.y())
        if work_crs != source_crs:
            self._forward = QgsCoordinateTransform(source_crs, work_crs, context.transformContext())
            self._backward = QgsCoordinateTransform(work_crs, source_crs, context.transformContext())
        return True

    def processFeature(
        self, feature: QgsFeature, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> list[QgsFeature]:
        from ..core.vectors.regularize import regularize_polygon

        geometry = feature.geometry()
        flag = False
        if not geometry.isEmpty():
            if self._forward is not None:
                geometry.transform(self._forward)
            squared, flag = regularize_polygon(
                from_qgs_geometry(geometry), tolerance=self._tolerance, min_iou=self._min_iou
            )
            geometry = to_qgs_geometry(squared)
            if self._backward is not None:
                geometry.transform(self._backward)
        fields = self._fields if self._fields is not None else self.outputFields(feature.fields())
        out = QgsFeature(fields, feature.id())
        attributes = feature.attributes() + [None] * (fields.count() - len(feature.attributes()))
        attributes[fields.indexOf(FLAG_FIELD)] = bool(flag)
        out.setAttributes(attributes)
        out.setGeometry(geometry)
        self._changed += int(flag)
        self._seen += 1
        return [out]

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        results = super().processAlgorithm(parameters, context, feedback)  # QGIS's feature loop
        feedback.pushInfo(f"Squared {self._changed} of {self._seen} outlines.")
        return {**results, "N_REGULARIZED": self._changed}
