"""Enum values that moved into `Qgis` in QGIS 3.30-3.36 (and lose their old homes in QGIS 4).

Each constant takes the new scoped name when this QGIS has it, else the QGIS 3.22 name.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    Qgis,
    QgsProcessing,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsWkbTypes,
)


def _pick(new: tuple[str, str], old: Any) -> Any:
    holder = getattr(Qgis, new[0], None)
    return getattr(holder, new[1]) if holder is not None else old


SOURCE_POLYGON = _pick(("ProcessingSourceType", "VectorPolygon"), QgsProcessing.SourceType.TypeVectorPolygon)
SOURCE_RASTER = _pick(("ProcessingSourceType", "Raster"), QgsProcessing.SourceType.TypeRaster)
NUMBER_DOUBLE = _pick(("ProcessingNumberParameterType", "Double"), QgsProcessingParameterNumber.Type.Double)
NUMBER_INTEGER = _pick(("ProcessingNumberParameterType", "Integer"), QgsProcessingParameterNumber.Type.Integer)
FILE_FOLDER = _pick(("ProcessingFileParameterBehavior", "Folder"), QgsProcessingParameterFile.Behavior.Folder)
FLAG_ADVANCED = _pick(("ProcessingParameterFlag", "Advanced"), QgsProcessingParameterDefinition.Flag.FlagAdvanced)
WKB_MULTIPOLYGON = _pick(("WkbType", "MultiPolygon"), QgsWkbTypes.Type.MultiPolygon)
GEOMETRY_POLYGON = _pick(("GeometryType", "Polygon"), QgsWkbTypes.GeometryType.PolygonGeometry)
