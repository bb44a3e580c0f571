"""footprint:evaluatefootprints: SpaceNet-style object scores of predicted vs reference buildings."""

from __future__ import annotations

import json
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingUtils,
)

from .base import (
    GROUP_VECTOR,
    FeedbackAdapter,
    FootprintAlgorithm,
    add_polygon_features,
    crs_from_wkt,
    make_fields,
)
from .compat import NUMBER_DOUBLE, SOURCE_POLYGON, WKB_MULTIPOLYGON


class EvaluateFootprintsAlgorithm(FootprintAlgorithm):
    PREDICTED = "PREDICTED"
    REFERENCE = "REFERENCE"
    AOI = "AOI"
    IOU_THRESHOLD = "IOU_THRESHOLD"
    MIN_AREA = "MIN_AREA"
    TRUE_POSITIVES = "TRUE_POSITIVES"
    FALSE_POSITIVES = "FALSE_POSITIVES"
    FALSE_NEGATIVES = "FALSE_NEGATIVES"
    REPORT = "REPORT"

    NAME = "evaluatefootprints"
    DISPLAY_NAME = "Evaluate building footprints"
    GROUP = GROUP_VECTOR
    HELP = (
        "Scores predicted building polygons against reference (ground-truth) polygons the SpaceNet way: each "
        "prediction matches at most one reference building with IoU ≥ the threshold (one to one). Reports "
        "true positives (TP), false positives (FP), false negatives (FN), precision, recall, F1 and mean IoU, "
        "plus pixel IoU/Dice from the polygon areas.\n\n"
        "Both layers are reprojected to one metric CRS. With an <b>AOI</b>, both are clipped to it, so reference "
        "buildings outside the scored area do not count as missed. <b>Minimum area</b> drops smaller polygons "
        "from both. Outputs TP, FP and FN layers and an optional JSON report."
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        polygon = [SOURCE_POLYGON]
        self.addParameter(QgsProcessingParameterFeatureSource(self.PREDICTED, self.tr("Predicted buildings"), polygon))
        self.addParameter(QgsProcessingParameterFeatureSource(self.REFERENCE, self.tr("Reference buildings"), polygon))
        self.addParameter(
            QgsProcessingParameterFeatureSource(self.AOI, self.tr("Area of interest"), polygon, optional=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.IOU_THRESHOLD,
                self.tr("IoU threshold"),
                NUMBER_DOUBLE,
                0.5,
                minValue=0.01,
                maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_AREA, self.tr("Minimum building area (m²)"), NUMBER_DOUBLE, 0.0, minValue=0.0
            )
        )
        for name, label in (
            (self.TRUE_POSITIVES, "True positives"),
            (self.FALSE_POSITIVES, "False positives"),
            (self.FALSE_NEGATIVES, "False negatives (missed)"),
        ):
            self.addParameter(
                QgsProcessingParameterFeatureSink(
                    name, self.tr(label), SOURCE_POLYGON, optional=True, createByDefault=True
                )
            )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.REPORT, self.tr("JSON report"), "JSON files (*.json)", optional=True, createByDefault=False
            )
        )
        for name in ("TP", "FP", "FN", "PRECISION", "RECALL", "F1", "MEAN_IOU", "PIXEL_IOU"):
            self.addOutput(QgsProcessingOutputNumber(name, name.replace("_", " ").title()))
        self.addOutput(QgsProcessingOutputString("METRICS", self.tr("All metrics (JSON)")))

    MATCH_LAYERS = (
        (TRUE_POSITIVES, "True positives"),
        (FALSE_POSITIVES, "False positives"),
        (FALSE_NEGATIVES, "False negatives"),
    )

    def perform(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.vectors.evaluate import evaluate_files

        predicted = self._readable_path(parameters, self.PREDICTED, context)
        reference = self._readable_path(parameters, self.REFERENCE, context)
        if not predicted or not reference:
            raise QgsProcessingException("Pick both a predicted and a reference polygon layer.")
        report = self.parameterAsFileOutput(parameters, self.REPORT, context) or None
        self._check_destinations(parameters, context, predicted, reference, report)
        adapter = FeedbackAdapter(feedback, 0.0, 0.9)
        result = evaluate_files(
            predicted,
            reference,
            aoi_path=self._readable_path(parameters, self.AOI, context),
            min_area_m2=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            report_json=report,
            iou_threshold=self.parameterAsDouble(parameters, self.IOU_THRESHOLD, context),
            progress=adapter.progress,
            is_canceled=adapter.is_canceled,
        )
        for warning in result.warnings:
            feedback.pushWarning(warning)
        for line in result.summary_lines():
            feedback.pushInfo(line)
        outputs = self._write_match_layers(parameters, context, feedback, result)
        feedback.setProgress(100.0)
        scores = result.scores
        return {
            **outputs,
            self.REPORT: str(result.report_path) if result.report_path else None,
            "TP": scores.tp,
            "FP": scores.fp,
            "FN": scores.fn,
            "PRECISION": scores.precision,
            "RECALL": scores.recall,
            "F1": scores.f1,
            "MEAN_IOU": scores.mean_iou,
            "PIXEL_IOU": float(result.pixel.get("iou", 0.0)),
            "METRICS": json.dumps(result.to_dict(), default=str),
        }

    def _check_destinations(
        self, parameters: dict[str, Any], context: QgsProcessingContext, predicted: str, reference: str, report
    ) -> None:
        """Before any work: no report or TP/FP/FN layer may replace an input or another output."""
        from ..core.io.paths import check_outputs

        layers = {
            label: self.parameterAsOutputLayer(parameters, name, context) or None for name, label in self.MATCH_LAYERS
        }
        check_outputs(
            {"Predicted buildings": predicted, "Reference buildings": reference}, {"JSON report": report, **layers}
        )

    def _write_match_layers(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback, result
    ) -> dict[str, Any]:
        """The TP, FP and FN sinks, in the predicted layer's CRS (the scoring ran in a metric one)."""
        metric_crs = crs_from_wkt(result.crs_wkt)
        crs = self.parameterAsSource(parameters, self.PREDICTED, context).sourceCrs()
        if not crs.isValid():
            crs = metric_crs
        to_output = QgsCoordinateTransform(metric_crs, crs, context.transformContext())
        fp, fn = result.fp_indices, result.fn_indices  # the same sets the engine writes to its TP/FP/FN layers
        layers = (
            (
                self.TRUE_POSITIVES,
                [("pred_index", "int"), ("gt_index", "int"), ("iou", "float")],
                [result.predicted[m.pred] for m in result.matches],
                [{"pred_index": m.pred, "gt_index": m.gt, "iou": round(m.iou, 4)} for m in result.matches],
            ),
            (
                self.FALSE_POSITIVES,
                [("pred_index", "int")],
                [result.predicted[i] for i in fp],
                [{"pred_index": i} for i in fp],
            ),
            (
                self.FALSE_NEGATIVES,
                [("gt_index", "int")],
                [result.ground_truth[i] for i in fn],
                [{"gt_index": i} for i in fn],
            ),
        )
        outputs: dict[str, Any] = {}
        for name, spec, geometries, attributes in layers:
            fields = make_fields(spec)
            sink, dest_id = self.parameterAsSink(parameters, name, context, fields, WKB_MULTIPOLYGON, crs)
            if sink is None:
                continue
            add_polygon_features(
                sink, fields, geometries, attributes, feedback, transform=lambda g: g.transform(to_output)
            )
            sink.flushBuffer()
            outputs[name] = dest_id
        return outputs

    def _readable_path(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext) -> str | None:
        """A vector parameter as a file the engine reads; None when not given.

        GeoPackage, GeoJSON and Shapefile layers are read where they are. Any other layer (temporary,
        PostGIS, a selection or a filtered layer) is written by QGIS as lon/lat GeoJSON: QGIS's own CRS
        and transform decide the coordinates, so no exporter's CRS translation can lose them (a
        GeoPackage export of a temporary layer came out with srs_id 0, "undefined geographic", on the desktop).
        """
        source = self.parameterAsSource(parameters, name, context)
        if source is None:
            return None
        layer = self.parameterAsVectorLayer(parameters, name, context)
        value = parameters.get(name)
        whole = not getattr(value, "selectedFeaturesOnly", False) and getattr(value, "featureLimit", -1) in (-1, 0)
        if layer is not None and layer.providerType() == "ogr" and whole and not layer.subsetString():
            path = layer.source().split("|")[0]
            if path.lower().endswith((".gpkg", ".geojson", ".json", ".shp")):
                return layer.source()
        return write_lonlat_geojson(source, QgsProcessingUtils.generateTempFilename(f"{name}.geojson"), context)


def write_lonlat_geojson(source: Any, path: str, context: QgsProcessingContext) -> str:
    """Every polygon of a feature source as RFC 7946 GeoJSON (lon/lat, full double precision)."""
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    crs = source.sourceCrs()
    transform = QgsCoordinateTransform(crs, wgs84, context.transformContext()) if crs.isValid() else None
    names = source.fields().names()
    features = []
    for feature in source.getFeatures(QgsFeatureRequest()):
        geometry = feature.geometry()
        if geometry is None or geometry.isEmpty():
            continue
        if transform is not None:
            geometry.transform(transform)
        values = {n: v for n, v in zip(names, feature.attributes()) if isinstance(v, (int, float, str, bool))}
        features.append({"type": "Feature", "properties": values, "geometry": json.loads(geometry.asJson(17))})
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"type": "FeatureCollection", "features": features}, handle)
    return path
