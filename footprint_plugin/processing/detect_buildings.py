"""footprint:detectbuildings: one raster in, building polygons and a probability raster out."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
    QgsRectangle,
)

from . import webmap
from .base import (
    GROUP_DETECT,
    FeedbackAdapter,
    FootprintAlgorithm,
    add_polygon_features,
    building_fields,
    crs_from_wkt,
    raster_file,
)
from .compat import SOURCE_POLYGON, WKB_MULTIPOLYGON
from .detector_settings import DetectorSettings
from .messages import user_notes, user_warnings


def crop_window(
    raster: Path,
    layer: QgsRasterLayer,
    extent: QgsRectangle | None,
    mask_geometry: QgsGeometry | None,
) -> tuple[int, int, int, int]:
    """The raster's pixel window inside extent and mask bounds (both in the raster's CRS). Detect runs on the
    raster itself with this window, so its statistics and tile grid are the whole layer's on any extent."""
    from ..core.engine.planning import pixel_window

    area = QgsRectangle(layer.extent())
    for limit in (extent, mask_geometry.boundingBox() if mask_geometry is not None else None):
        if limit is not None and not limit.isNull():
            area = area.intersect(limit)
    if area.isEmpty():
        raise QgsProcessingException(
            "The extent/mask does not overlap the raster. Pick an extent or mask inside the raster's footprint."
        )
    return pixel_window(raster, (area.xMinimum(), area.yMinimum(), area.xMaximum(), area.yMaximum()))


class RasterSnapshot:
    """What perform() needs of the input layer, read on the main thread (a layer is not thread-safe).

    Offers the QgsRasterLayer methods the algorithm calls; ``layer`` stays for web maps, whose
    provider is read block by block while fetching.
    """

    def __init__(self, layer: QgsRasterLayer) -> None:
        self.layer = layer
        self._valid = layer.isValid()
        self._provider = layer.providerType()
        self._source = layer.source()
        self._name = layer.name()
        self._crs = QgsCoordinateReferenceSystem(layer.crs())
        self._extent = QgsRectangle(layer.extent())

    @classmethod
    def of(cls, layer: QgsRasterLayer | None) -> RasterSnapshot | None:
        return cls(layer) if layer is not None else None

    def isValid(self) -> bool:  # noqa: N802 - the QgsRasterLayer method name
        return self._valid

    def providerType(self) -> str:  # noqa: N802
        return self._provider

    def source(self) -> str:
        return self._source

    def name(self) -> str:
        return self._name

    def crs(self) -> QgsCoordinateReferenceSystem:
        return QgsCoordinateReferenceSystem(self._crs)

    def extent(self) -> QgsRectangle:
        return QgsRectangle(self._extent)


class DetectBuildingsAlgorithm(DetectorSettings, FootprintAlgorithm):
    INPUT = "INPUT"
    EXTENT = "EXTENT"
    MASK = "MASK"
    OUTPUT = "OUTPUT"
    PROBABILITY = "PROBABILITY"

    NAME = "detectbuildings"
    DISPLAY_NAME = "Detect buildings"
    GROUP = GROUP_DETECT
    HELP = (
        "Finds building footprints in an optical (EO) or radar (SAR) raster with a deep-learning segmentation model.\n\n"
        "<b>Input raster</b>: a GeoTIFF (or any GDAL file) whose bands match the model card; the raster is rescaled "
        "as the card says.\n<b>Model</b>: a bundled or user model (see Model manager).\n"
        "<b>Device</b>: auto uses a CUDA GPU when one is available, otherwise the CPU.\n"
        "<b>Threshold</b>: empty uses the model card's default. <b>TTA</b> averages flipped/rotated passes as the card says.\n"
        "<b>Minimum area</b>: smaller polygons (m²) are dropped. <b>Regularize</b> squares the outlines.\n"
        "<b>Extent</b>/<b>Mask</b>: optional, limit where to look; with a mask, only buildings touching it are kept.\n\n"
        "Outputs: building polygons (score, area_m2, perimeter_m, compactness, regularized, source, model) "
        "and a probability raster (0..1)."
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster")))
        self.add_detector_parameters()
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, self.tr("Limit to extent"), optional=True))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.MASK, self.tr("Limit to mask polygons"), [SOURCE_POLYGON], optional=True
            )
        )
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Buildings"), SOURCE_POLYGON))
        self.addParameter(
            QgsProcessingParameterRasterDestination(self.PROBABILITY, self.tr("Building probability"), optional=True)
        )
        for name, label in (
            ("N_BUILDINGS", "Buildings found"),
            ("SECONDS", "Seconds"),
            ("MP_PER_S", "Megapixels per second"),
        ):
            self.addOutput(QgsProcessingOutputNumber(name, self.tr(label)))
        for name, label in (("DEVICE_USED", "Device used"), ("MODEL_USED", "Model used")):
            self.addOutput(QgsProcessingOutputString(name, self.tr(label)))

    def prepareAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> bool:
        # On the main thread: look the project's layers up here, so the worker thread that runs
        # perform() never touches them while QGIS adds or draws layers (that raced and crashed).
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        self._input = RasterSnapshot(layer) if layer is not None else None
        self._mask = self._mask_geometry(parameters, context, layer, feedback) if layer is not None else None
        return True

    def perform(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        layer = getattr(self, "_input", None) or RasterSnapshot.of(
            self.parameterAsRasterLayer(parameters, self.INPUT, context)
        )
        web = webmap.is_web_layer(layer)  # XYZ/WMS/WMTS/…: fetched into a temporary GeoTIFF below
        raster = webmap.display_path(layer) if web else raster_file(layer, self.INPUT)
        card, inference_options, polygon_options = self.detector_options(parameters, context)
        probability = self.parameterAsOutputLayer(parameters, self.PROBABILITY, context) or None
        self._check_job(parameters, context, raster, probability, inference_options, polygon_options)
        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        mask_geometry = (
            self._mask if hasattr(self, "_mask") else self._mask_geometry(parameters, context, layer, feedback)
        )
        feedback.pushInfo(f"Model: {card.display_name} ({card.architecture}, {card.sensor}, {card.gsd_m} m)")
        result = self._detect(
            layer,
            raster,
            web,
            extent,
            mask_geometry,
            card,
            probability,
            inference_options,
            polygon_options,
            context,
            feedback,
        )
        for warning in user_warnings(result.warnings):  # each once, in a user's words
            feedback.pushWarning(warning)
        for note in user_notes(result.warnings):  # details, not warnings
            feedback.pushInfo(note)
        dest_id, written = self._write_buildings(parameters, context, feedback, layer, raster, result, mask_geometry)
        feedback.setProgress(100.0)
        for line in result.summary_lines():
            if not line.startswith("Warning: "):  # pushed as warnings above already
                feedback.pushInfo(line)
        return {
            self.OUTPUT: dest_id,
            self.PROBABILITY: str(result.probability_path) if result.probability_path else None,
            "N_BUILDINGS": written,
            "SECONDS": result.seconds,
            "MP_PER_S": result.mp_per_s,
            "DEVICE_USED": result.device_name,
            "MODEL_USED": result.model,
        }

    def _check_job(self, parameters, context, raster, probability, inference_options, polygon_options) -> None:
        """Before any work: no output may be the input raster or the other output, and the job must fit."""
        from ..core.engine.pipeline import check_detect_job
        from ..core.io.paths import check_outputs

        buildings = self.parameterAsOutputLayer(parameters, self.OUTPUT, context) or None
        check_outputs({"Input raster": raster}, {"Building probability": probability, "Buildings": buildings})
        check_detect_job(
            raster,
            None,
            probability,
            inference_options,
            polygon_options,
            labels={"raster": "Input raster", "probability": "Building probability"},
        )

    def _detect(
        self,
        layer,
        raster,
        web,
        extent,
        mask_geometry,
        card,
        probability,
        inference_options,
        polygon_options,
        context,
        feedback,
    ):
        """The engine's detect on the file, a pixel window of it (extent or mask), or a fetched web-map area."""
        from ..core.engine.pipeline import detect_buildings

        adapter = FeedbackAdapter(feedback, 0.0, 0.97)
        with tempfile.TemporaryDirectory(prefix="footprint_detect_") as scratch:
            source = raster
            if web:
                source = webmap.fetch_area(
                    layer.layer, extent, mask_geometry, card.gsd_m, Path(scratch), feedback, context
                )
                adapter = FeedbackAdapter(feedback, webmap.FETCH_SHARE, 0.97)
            elif extent is not None or mask_geometry is not None:
                window = crop_window(raster, layer, extent, mask_geometry)
                inference_options = dataclasses.replace(inference_options, window=window)
            return detect_buildings(
                source,
                None,
                card,
                probability_path=probability,
                inference_options=inference_options,
                polygon_options=polygon_options,
                progress=adapter.progress,
                is_canceled=adapter.is_canceled,
                log=feedback.pushInfo,
            )

    def _write_buildings(self, parameters, context, feedback, layer, raster, result, mask_geometry) -> tuple[Any, int]:
        """The buildings sink, created only now so a failed or canceled run leaves no empty output file."""
        geometries, attributes = result.geometries, result.attributes
        if mask_geometry is not None:
            geometries, attributes = self._inside_mask(geometries, attributes, mask_geometry)
        fields = building_fields()
        sink, dest_id = self.parameterAsSink(
            parameters,
            self.OUTPUT,
            context,
            fields,
            WKB_MULTIPOLYGON,
            layer.crs() if layer.crs().isValid() else crs_from_wkt(result.crs_wkt),  # QGIS's own reading of the input
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        attributes = [{**attrs, "source": raster.name} for attrs in attributes]
        written = add_polygon_features(sink, fields, geometries, attributes, feedback)
        sink.flushBuffer()
        return dest_id, written

    def _mask_geometry(self, parameters, context, layer, feedback) -> QgsGeometry | None:
        source = self.parameterAsSource(parameters, self.MASK, context)
        if source is None:
            return None
        transform = QgsCoordinateTransform(source.sourceCrs(), layer.crs(), context.transformContext())
        parts = []
        for feature in source.getFeatures():
            geometry = QgsGeometry(feature.geometry())
            if geometry.isEmpty():
                continue
            geometry.transform(transform)
            parts.append(geometry)
        if not parts:
            feedback.pushWarning("The mask layer has no polygons; running on the whole raster.")
            return None
        return QgsGeometry.unaryUnion(parts)

    @staticmethod
    def _inside_mask(geometries: list, attributes: list, mask: QgsGeometry) -> tuple[list, list]:
        from .base import from_qgs_geometry

        mask_shape = from_qgs_geometry(mask)
        kept = [(g, a) for g, a in zip(geometries, attributes) if g.intersects(mask_shape)]
        return [g for g, _ in kept], [a for _, a in kept]
