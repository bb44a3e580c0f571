"""footprint:batchdetect: a folder (or list) of tiles into one merged building layer with a `tile` field.

The work is the engine's batch job (core/batch/runner.py): touching tiles are one mosaic, so buildings across
tile edges come out whole; blocks run in this QGIS process or, as advanced choices, on local Dask
worker processes or an existing Dask scheduler; a job folder makes a canceled or crashed run resumable.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
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
from .compat import FILE_FOLDER, FLAG_ADVANCED, NUMBER_INTEGER, SOURCE_POLYGON, SOURCE_RASTER, WKB_MULTIPOLYGON
from .detector_settings import DetectorSettings
from .messages import user_warnings


class BatchDetectAlgorithm(DetectorSettings, FootprintAlgorithm):
    FOLDER = "FOLDER"
    PATTERN = "PATTERN"
    RASTERS = "RASTERS"
    OUTPUT = "OUTPUT"
    PROBABILITY_FOLDER = "PROBABILITY_FOLDER"
    WORKERS = "WORKERS"
    SCHEDULER = "SCHEDULER"
    JOB_FOLDER = "JOB_FOLDER"
    RESUME = "RESUME"
    BLOCK_SIZE = "BLOCK_SIZE"
    CONFIRM_LONG = "CONFIRM_LONG"

    NAME = "batchdetect"
    DISPLAY_NAME = "Detect buildings in many tiles"
    GROUP = GROUP_DETECT
    HELP = (
        "Detects buildings in every tile of a folder (matching a file pattern such as *.tif) and/or a list of "
        "raster layers, and merges them into one layer with a <b>tile</b> field naming the source tile.\n\n"
        "Touching tiles of one CRS and resolution are read as one mosaic, so a building across a tile edge comes "
        "out whole. Unreadable or unsuitable tiles are skipped with a warning and listed in the summary; the run "
        "goes on. Mosaics in another CRS than the first are reprojected into the first one's CRS.\n"
        "Optionally writes one probability raster (Cloud-Optimized GeoTIFF) per mosaic into a folder: "
        "<i>tile</i>_probability.tif for a lone tile.\n\n"
        "<b>Advanced</b>: <i>Dask workers</i> runs the blocks on that many local worker processes (0: inside QGIS; "
        "needs the dask package), <i>Dask scheduler</i> sends them to an existing cluster (tcp://host:8786). "
        "With a <i>job folder</i>, finished blocks are kept there, and <i>Resume</i> continues a canceled or crashed "
        "run from them. A job folder must be new, empty or one of this plugin's job folders.\n\n"
        "If any block fails, no layer is written: the error names the blocks and their tiles, and with a job folder "
        "<i>Resume</i> redoes only those. A job estimated at more than an hour starts only with <i>Start a job "
        "estimated at hours</i> ticked."
    )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self.addParameter(
            QgsProcessingParameterFile(self.FOLDER, self.tr("Folder of tiles"), behavior=FILE_FOLDER, optional=True)
        )
        self.addParameter(QgsProcessingParameterString(self.PATTERN, self.tr("File pattern in the folder"), "*.tif"))
        self.addParameter(
            QgsProcessingParameterMultipleLayers(self.RASTERS, self.tr("Raster tiles"), SOURCE_RASTER, optional=True)
        )
        self.add_detector_parameters()
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, self.tr("Buildings"), SOURCE_POLYGON))
        self.addParameter(
            QgsProcessingParameterFolderDestination(
                self.PROBABILITY_FOLDER,
                self.tr("Folder for probability rasters (one per mosaic)"),
                optional=True,
                createByDefault=False,
            )
        )
        advanced = [
            QgsProcessingParameterNumber(
                self.WORKERS, self.tr("Dask workers (0: run inside QGIS)"), NUMBER_INTEGER, defaultValue=0, minValue=0
            ),
            QgsProcessingParameterString(
                self.SCHEDULER, self.tr("Dask scheduler address (e.g. tcp://host:8786; empty: none)"), optional=True
            ),
            QgsProcessingParameterFile(
                self.JOB_FOLDER,
                self.tr("Job folder (keeps finished blocks for Resume; empty: temporary)"),
                behavior=FILE_FOLDER,
                optional=True,
            ),
            QgsProcessingParameterBoolean(self.RESUME, self.tr("Resume the job in the job folder"), False),
            QgsProcessingParameterNumber(
                self.BLOCK_SIZE, self.tr("Block size (pixels)"), NUMBER_INTEGER, defaultValue=4096, minValue=128
            ),
            QgsProcessingParameterBoolean(self.CONFIRM_LONG, self.tr("Start a job estimated at hours"), False),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | FLAG_ADVANCED)
            self.addParameter(parameter)
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
            tiles += sorted(
                p for p in Path(folder).iterdir() if p.is_file() and fnmatch.fnmatch(p.name.lower(), pattern.lower())
            )
        for layer in self.parameterAsLayerList(parameters, self.RASTERS, context):
            tiles.append(raster_file(layer, self.RASTERS))
        if not tiles:
            raise QgsProcessingException(
                "No tiles to process. Pick a folder containing rasters that match the file pattern, or some raster layers."
            )
        return list(dict.fromkeys(tiles))

    def _check_job(
        self,
        tiles: list[Path],
        parameters: dict[str, Any],
        context: QgsProcessingContext,
        probability_folder: str,
        inference_options: Any,
        polygon_options: Any,
    ) -> None:
        """Before any work (the model is not loaded yet): no output may be an input tile, and the
        threshold, minimum area and batch size must be usable, so a mistake costs a second, not a run."""
        from ..core.engine.pipeline import check_detect_job
        from ..core.io.paths import check_outputs

        buildings = self.parameterAsOutputLayer(parameters, self.OUTPUT, context) or None
        outputs: dict[str, Any] = {"Buildings": buildings}
        if probability_folder:
            # The folder itself may exist (Processing may create it); the files the batch writes into it
            # (<tile>_probability.tif for a lone tile) must not be any input tile.
            folder = Path(probability_folder)
            planned = {folder / f"{tile.stem}_probability.tif": tile for tile in tiles}  # a.tif, a.vrt: one name
            for path, tile in planned.items():
                outputs[f"Probability raster for {tile.name}"] = path
        check_outputs({f"tile {tile.name}": tile for tile in tiles}, outputs)
        check_detect_job(tiles[0], None, None, inference_options, polygon_options, labels={"raster": "input tile"})

    def perform(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        from ..core.batch.runner import BatchOptions, run_batch

        tiles = self._tiles(parameters, context)
        card, inference_options, polygon_options = self.detector_options(parameters, context)
        probability_folder = self.parameterAsString(parameters, self.PROBABILITY_FOLDER, context)
        self._check_job(tiles, parameters, context, probability_folder, inference_options, polygon_options)
        scheduler = (self.parameterAsString(parameters, self.SCHEDULER, context) or "").strip()
        job_folder = self.parameterAsFile(parameters, self.JOB_FOLDER, context)
        resume = self.parameterAsBool(parameters, self.RESUME, context)
        if resume and not job_folder:
            raise QgsProcessingException("Resume needs the job folder of the earlier run. Set 'Job folder'.")
        options = BatchOptions(
            workers=self.parameterAsInt(parameters, self.WORKERS, context),
            scheduler=scheduler or None,
            block_size=self.parameterAsInt(parameters, self.BLOCK_SIZE, context) or 4096,
            job_dir=job_folder or None,
            resume=resume,
            keep_job=bool(job_folder),
            probability_dir=probability_folder or None,
            confirmed=self.parameterAsBool(parameters, self.CONFIRM_LONG, context),
        )
        adapter = FeedbackAdapter(feedback, 0.0, 0.97)

        def status(progress) -> None:
            eta = progress.eta_s
            feedback.setProgressText(
                f"Blocks {progress.blocks_done}/{progress.blocks_total}, {progress.mp_per_s:.2f} MP/s"
                + (f", about {eta:.0f} s left" if eta is not None else "")
            )

        # The sink is created only after the job succeeded, so a failed or canceled batch leaves no partial layer.
        result = run_batch(
            tiles,
            None,
            card,
            inference_options,
            polygon_options,
            options,
            progress=adapter.progress,
            is_canceled=adapter.is_canceled,
            on_status=status,
            on_info=feedback.pushInfo,
        )
        for warning in user_warnings(result.warnings):  # each once, in a user's words
            feedback.pushWarning(warning)
        for skipped in result.skipped:
            feedback.reportError(f"Skipping {skipped}", fatalError=False)
        fields = building_fields(with_tile=True)
        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, fields, WKB_MULTIPOLYGON, crs_from_wkt(result.crs_wkt)
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        n_buildings = add_polygon_features(sink, fields, result.geometries, result.attributes, feedback)
        sink.flushBuffer()
        for line in result.summary_lines():
            if not line.startswith("Warning: "):  # pushed as warnings above already
                feedback.pushInfo(line)
        problems = list(result.skipped)  # failed blocks raise (BlocksFailedError): no layer then
        if problems:
            feedback.pushWarning("Skipped tiles:\n" + "\n".join(problems))
        return {
            self.OUTPUT: dest_id,
            self.PROBABILITY_FOLDER: probability_folder or None,
            "N_BUILDINGS": n_buildings,
            "N_TILES": result.n_tiles,
            "N_SKIPPED": len(result.skipped),
            "SKIPPED": "\n".join(problems),
        }
