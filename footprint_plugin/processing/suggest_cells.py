"""footprint:suggestcells: where to digitize next, as square cells ranked by how much labelling each would teach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from ..core.common.vocabulary import DEFAULT_CELL_SIZE_M
from .base import (
    GROUP_TRAIN,
    FootprintAlgorithm,
    add_polygon_features,
    crs_from_wkt,
    make_fields,
    raster_file,
    source_path,
)
from .compat import FLAG_ADVANCED, NUMBER_DOUBLE, NUMBER_INTEGER, SOURCE_POLYGON, WKB_MULTIPOLYGON

CELL_FIELDS = (
    ("rank", "int"),
    ("score", "float"),
    ("uncertainty", "float"),
    ("variety", "float"),
    ("mean_probability", "float"),
    ("detections", "int"),
)


class SuggestCellsAlgorithm(FootprintAlgorithm):
    PROBABILITY = "PROBABILITY"
    IMAGE = "IMAGE"
    DETECTIONS = "DETECTIONS"
    LABELLED = "LABELLED"
    CELL_SIZE = "CELL_SIZE"
    THRESHOLD = "THRESHOLD"
    MAX_CELLS = "MAX_CELLS"
    VARIETY_WEIGHT = "VARIETY_WEIGHT"
    OUTPUT = "OUTPUT"

    NAME = "suggestcells"
    DISPLAY_NAME = "Where to digitize next"
    GROUP = GROUP_TRAIN
    HELP = (
        "Turns a detection run's probability raster into square cells ranked by how much labelling each would "
        "help a fine-tune (rank 1 first).\n\n<b>Uncertainty</b>: how close the cell's probabilities sit to the "
        "threshold. <b>Variety</b>: how unlike the cell looks from the cells already labelled and those ranked "
        "before it (image statistics when the <b>Imagery</b> is given, else the probability histogram).\n"
        "<b>Already labelled</b> (optional): polygons of the cells or areas you digitized before; cells mostly "
        "inside them are left out.\n<b>Detections</b> (optional): the building layer of the same run, counted "
        "per cell.\n\nDigitize or correct every building inside the top cells, then fine-tune with the cells as "
        "<b>Area digitized</b>: an empty reviewed cell teaches 'no building here', and nothing outside counts."
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.PROBABILITY, self.tr("Building probability raster")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.IMAGE, self.tr("Imagery (optional)"), optional=True))
        polygon = [SOURCE_POLYGON]
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.DETECTIONS, self.tr("Detections (optional)"), polygon, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.LABELLED, self.tr("Already labelled (optional)"), polygon, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.CELL_SIZE, self.tr("Cell size (m)"), NUMBER_DOUBLE, DEFAULT_CELL_SIZE_M, minValue=1.0
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MAX_CELLS, self.tr("Number of cells"), NUMBER_INTEGER, 20, minValue=1, maxValue=10000
            )
        )
        advanced = [
            QgsProcessingParameterNumber(
                self.THRESHOLD,
                self.tr("Threshold of the detection run"),
                NUMBER_DOUBLE,
                0.5,
                minValue=0.01,
                maxValue=0.99,
            ),
            QgsProcessingParameterNumber(
                self.VARIETY_WEIGHT, self.tr("Weight of variety (0-1)"), NUMBER_DOUBLE, 0.5, minValue=0.0, maxValue=1.0
            ),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | FLAG_ADVANCED)
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Cells to digitize"), SOURCE_POLYGON))
        self.addOutput(QgsProcessingOutputNumber("N_CELLS", self.tr("Cells suggested")))

    def _polygons(self, parameters, name, context, feedback, crs_wkt: str) -> list:
        from ..core.io.vector_io import read_polygons

        path = source_path(self, parameters, name, context, feedback)
        return list(read_polygons(Path(path), target_crs_wkt=crs_wkt).geometries) if path else []

    def prepareAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> bool:
        # On the main thread, so the worker never touches the project's layers.
        try:
            self._rasters = self._raster_files(parameters, context)
        except QgsProcessingException:
            self._rasters = None  # perform() raises the same message in the run's log
        return True

    def _raster_files(self, parameters: dict[str, Any], context: QgsProcessingContext) -> tuple[Any, Any]:
        """(the probability raster's file, the image's file or None)."""
        probability = raster_file(self.parameterAsRasterLayer(parameters, self.PROBABILITY, context), self.PROBABILITY)
        image_layer = self.parameterAsRasterLayer(parameters, self.IMAGE, context)
        return probability, (raster_file(image_layer, self.IMAGE) if image_layer is not None else None)

    def perform(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.io import raster_io
        from ..core.learning.suggest import suggest_cells

        probability, image = getattr(self, "_rasters", None) or self._raster_files(parameters, context)
        with raster_io.opened(probability) as dataset:
            if dataset.crs is None:
                raise QgsProcessingException("The probability raster has no CRS. Assign one, then run again.")
            crs_wkt = dataset.crs.to_wkt()
        feedback.setProgress(10)
        cells = suggest_cells(
            probability,
            cell_size_m=self.parameterAsDouble(parameters, self.CELL_SIZE, context),
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
            labelled=self._polygons(parameters, self.LABELLED, context, feedback, crs_wkt),
            image_path=image,
            detections=self._polygons(parameters, self.DETECTIONS, context, feedback, crs_wkt),
            max_cells=self.parameterAsInt(parameters, self.MAX_CELLS, context),
            variety_weight=self.parameterAsDouble(parameters, self.VARIETY_WEIGHT, context),
        )
        feedback.setProgress(80)
        fields = make_fields(CELL_FIELDS)
        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, fields, WKB_MULTIPOLYGON, crs_from_wkt(crs_wkt)
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        attributes = [{name: getattr(cell, name) for name, _kind in CELL_FIELDS} for cell in cells]
        add_polygon_features(sink, fields, [c.geometry for c in cells], attributes, feedback)
        sink.flushBuffer()
        if not cells:
            feedback.pushWarning("No cell to suggest: every cell is labelled already, or the model is sure everywhere.")
        else:
            feedback.pushInfo(
                f"Suggested {len(cells)} cells; digitize every building inside the top ones (rank 1 first)."
            )
        return {self.OUTPUT: dest_id, "N_CELLS": len(cells)}
