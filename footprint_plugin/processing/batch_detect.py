"""footprint:batchdetect: a folder (or list) of tiles into one merged building layer with a `tile` field."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCoordinateTransform,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from .base import (
    GROUP_DETECT,
    FeedbackAdapter,
    FootprintAlgorithm,
    add_polygon_features,
    building_fields,
    crs_from_wkt,
    raster_file,
)
from .compat import FILE_FOLDER, NUMBER_DOUBLE, SOURCE_POLYGON, SOURCE_RASTER, WKB_MULTIPOLYGON
from .detect_buildings import DEVICES, default_model, model_names, resolve_card


class BatchDetectAlgorithm(FootprintAlgorithm):
    FOLDER = "FOLDER"
    PATTERN = "PATTERN"
    RASTERS = "RASTERS"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    THRESHOLD = "THRESHOLD"
    MIN_AREA = "MIN_AREA"
    REGULARIZE = "REGULARIZE"
    TTA = "TTA"
    OUTPUT = "OUTPUT"
    PROBABILITY_FOLDER = "PROBABILITY_FOLDER"

    NAME = "batchdetect"
    DISPLAY_NAME = "Detect buildings in many tiles"
    GROUP = GROUP_DETECT
    HELP = (
        "Runs Detect buildings on every tile of a folder (matching a file pattern such as *.tif) and/or a list of "
        "raster layers, and merges the buildings into one layer with a <b>tile</b> field naming the source tile.\n\n"
        "Unreadable or unsuitable tiles are skipped with a warning and listed in the summary; the run goes on. "
        "Tiles in another CRS than the first are reprojected into the first tile's CRS.\n"
        "Optionally writes one probability raster per tile (<i>tile</i>_probability.tif) into a folder."
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFile(
                self.FOLDER, self.tr("Folder of tiles"), behavior=FILE_FOLDER, optional=True
            )
        )
        self.addParameter(QgsProcessingParameterString(self.PATTERN, self.tr("File pattern in the folder"), "*.tif"))
        self.addParameter(
            QgsProcessingParameterMultipleLayers(
                self.RASTERS, self.tr("Raster tiles"), SOURCE_RASTER, optional=True
            )
        )
        names = model_names()
        self.addParameter(
            QgsProcessingParameterEnum(
                self.MODEL, self.tr("Model"), options=names, defaultValue=default_model(names), optional=True,
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), options=DEVICES, defaultValue="auto", usesStaticStrings=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD, self.tr("Probability threshold (empty: model card default)"),
                NUMBER_DOUBLE, optional=True, minValue=0.0, maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_AREA, self.tr("Minimum building area (m²)"), NUMBER_DOUBLE,
                defaultValue=20.0, minValue=0.0,
            )
        )
        self.addParameter(QgsProcessingParameterBoolean(self.REGULARIZE, self.tr("Regularize outlines"), False))
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.TTA, self.tr("Test-time augmentation (the model card's policy, e.g. d4: 8 passes)"), False
            )
        )
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Buildings"), SOURCE_POLYGON))
        self.addParameter(
            QgsProcessingParameterFolderDestination(
                self.PROBABILITY_FOLDER, self.tr("Folder for per-tile probability rasters"), optional=True, createByDefault=False
            )
        )
        self.addOutput(QgsProcessingOutputNumber("N_BUILDINGS", self.tr("Buildings found")))
        self.addOutput(QgsProcessingOutputNumber("N_TILES", self.tr("Tiles processed")))
        self.addOutput(QgsProcessingOutputNumber("N_SKIPPED", self.tr("Tiles skipped")))
        self.addOutput(QgsProcessingOutputString("SKIPPED", self.tr("Skipped tiles and why")))

    def _tiles(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[Path]:
        tiles: list[Path] = []
        folder = self.parameterAsFile(parameters, self.FOLDER, context)
        if folder:
            if not Path(folder).is_dir():
                raise QgsProcessingException(f"Folder {folder} does not exist. Pick an existing folder of tiles.")
            pattern = self.parameterAsString(parameters, self.PATTERN, context) or "*.tif"
            tiles += sorted(p for p in Path(folder).iterdir() if p.is_file() and fnmatch.fnmatch(p.name.lower(), pattern.lower()))
        for layer in self.parameterAsLayerList(parameters, self.RASTERS, context):
            tiles.append(raster_file(layer, self.RASTERS))
        if not tiles:
            raise QgsProcessingException(
                "No tiles to process. Pick a folder containing rasters that match the file pattern, or some raster layers."
            )
        return list(dict.fromkeys(tiles))

    def perform(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.errors import CanceledError, FootprintError
        from ..core.inference import InferenceOptions
        from ..core.pipeline import detect_buildings
        from ..core.polygons import PolygonOptions

        tiles = self._tiles(parameters, context)
        card = resolve_card(self.parameterAsEnumString(parameters, self.MODEL, context))
        threshold_given = parameters.get(self.THRESHOLD) not in (None, "")
        inference_options = InferenceOptions(
            device=self.parameterAsEnumString(parameters, self.DEVICE, context) or "auto",
            tta=self.parameterAsBool(parameters, self.TTA, context),
        )
        polygon_options = PolygonOptions(
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context) if threshold_given else card.threshold,
            min_area_m2=self.parameterAsDouble(parameters, self.MIN_AREA, context),
            regularize=self.parameterAsBool(parameters, self.REGULARIZE, context),
        )
        probability_folder = self.parameterAsString(parameters, self.PROBABILITY_FOLDER, context)
        if probability_folder:
            Path(probability_folder).mkdir(parents=True, exist_ok=True)

        fields = building_fields(with_tile=True)
        sink_crs = None
        collected: list[tuple[list, list, Any]] = []
        skipped: list[str] = []
        n_buildings = n_done = 0
        from ..core.zoo import load_model

        model = load_model(card, "cpu")  # verified and built once, not once per tile
        for index, tile in enumerate(tiles):
            if feedback.isCanceled():
                raise CanceledError()
            feedback.pushInfo(f"[{index + 1}/{len(tiles)}] {tile.name}")
            adapter = FeedbackAdapter(feedback, index / len(tiles), (index + 1) / len(tiles))
            probability = str(Path(probability_folder) / f"{tile.stem}_probability.tif") if probability_folder else None
            try:
                result = detect_buildings(
                    tile, None, card, probability_path=probability, inference_options=inference_options,
                    polygon_options=polygon_options, progress=adapter.progress, is_canceled=adapter.is_canceled,
                    model=model,
                )
            except CanceledError:
                raise
            except FootprintError as exc:
                skipped.append(f"{tile.name}: {exc}")
                feedback.reportError(f"Skipping {tile.name}: {exc}", fatalError=False)
                continue
            n_done += 1
            for warning in result.warnings:
                feedback.pushWarning(f"{tile.name}: {warning}")
            tile_crs = crs_from_wkt(result.crs_wkt)
            if sink_crs is None:
                sink_crs = tile_crs
            transform = None
            if tile_crs.isValid() and sink_crs.isValid() and tile_crs != sink_crs:
                coordinate_transform = QgsCoordinateTransform(tile_crs, sink_crs, context.transformContext())

                def transform(geometry, ct=coordinate_transform) -> None:
                    geometry.transform(ct)

            attributes = [{**attrs, "source": tile.name, "tile": tile.stem} for attrs in result.attributes]
            collected.append((result.geometries, attributes, transform))
        if sink_crs is None:
            raise QgsProcessingException(
                "None of the tiles could be processed:\n" + "\n".join(skipped) + "\nCheck that they are valid rasters."
            )
        # The sink is created only after every tile ran, so a failed or canceled batch leaves no partial layer.
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, WKB_MULTIPOLYGON, sink_crs)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for geometries, attributes, transform in collected:
            n_buildings += add_polygon_features(sink, fields, geometries, attributes, feedback, transform=transform)
        sink.flushBuffer()
        summary = f"{n_buildings} buildings in {n_done} tiles; {len(skipped)} skipped."
        feedback.pushInfo(summary)
        if skipped:
            feedback.pushWarning("Skipped tiles:\n" + "\n".join(skipped))
        return {
            self.OUTPUT: dest_id,
            self.PROBABILITY_FOLDER: probability_folder or None,
            "N_BUILDINGS": n_buildings,
            "N_TILES": n_done,
            "N_SKIPPED": len(skipped),
            "SKIPPED": "\n".join(skipped),
        }
