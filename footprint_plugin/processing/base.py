"""Thin base class shared by every algorithm: dependency check, feedback adapters, error mapping.

Engine modules (torch, rasterio, ...) are imported inside `processAlgorithm` only, so the provider and its
algorithms stay registered and show a how-to-fix message when dependencies are missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

PLUGIN_ROOT = Path(__file__).resolve().parents[2]
ICON_PATH = PLUGIN_ROOT / "resources" / "icon.svg"
GROUP_DETECT = "Detection"
GROUP_TRAIN = "Training"
GROUP_VECTOR = "Vector tools"
VECTOR_FORMATS = ["gpkg", "geojson", "shp"]


def raster_file(layer: QgsRasterLayer | None, parameter: str) -> Path:
    """The file behind a raster layer; the engine reads files, not web services."""
    if layer is None:
        raise QgsProcessingException(f"{parameter}: no raster layer given. Pick a raster layer or a GeoTIFF file.")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{parameter}: layer '{layer.name()}' comes from the '{layer.providerType()}' provider. "
            "Save it as a GeoTIFF first (right-click > Export > Save As…) and run on that file."
        )
    path = Path(layer.source().split("|")[0])
    if not path.exists():
        raise QgsProcessingException(f"{parameter}: file {path} does not exist. Check the layer's source.")
    return path


def source_path(
    alg: QgsProcessingAlgorithm,
    parameters: dict[str, Any],
    name: str,
    context: QgsProcessingContext,
    feedback: QgsProcessingFeedback,
) -> str | None:
    """A vector parameter as a file path GDAL/fiona can read (exported to gpkg if needed); None when not given."""
    if alg.parameterAsSource(parameters, name, context) is None:
        return None
    return alg.parameterAsCompatibleSourceLayerPath(parameters, name, context, VECTOR_FORMATS, "gpkg", feedback)


def _field_type(kind: str):
    """Field type for QgsField on both QGIS 3.22 (QVariant) and QGIS >= 3.38 / 4 (QMetaType)."""
    if Qgis.QGIS_VERSION_INT >= 33800:
        from qgis.PyQt.QtCore import QMetaType

        return {
            "int": QMetaType.Type.Int,
            "float": QMetaType.Type.Double,
            "str": QMetaType.Type.QString,
            "bool": QMetaType.Type.Bool,
        }[kind]
    from qgis.PyQt.QtCore import QVariant

    return {
        "int": QVariant.Type.Int,
        "float": QVariant.Type.Double,
        "str": QVariant.Type.String,
        "bool": QVariant.Type.Bool,
    }[kind]


BUILDING_FIELDS = (
    ("id", "int"),
    ("score", "float"),
    ("area_m2", "float"),
    ("perimeter_m", "float"),
    ("compactness", "float"),
    ("regularized", "bool"),
    ("source", "str"),
    ("model", "str"),
)


def make_fields(spec: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> QgsFields:
    fields = QgsFields()
    for name, kind in spec:
        fields.append(QgsField(name, _field_type(kind)))
    return fields


def building_fields(with_tile: bool = False) -> QgsFields:
    """Fields of the building polygon layer (docs/ARCHITECTURE.md), plus `tile` in batch mode."""
    return make_fields(list(BUILDING_FIELDS) + ([("tile", "str")] if with_tile else []))


def to_qgs_geometry(geometry: Any) -> QgsGeometry:
    """A shapely geometry as a multi-part QgsGeometry (sinks are MultiPolygon so every part fits)."""
    import shapely

    qgs = QgsGeometry()
    # Explicit 2D: inside the QGIS desktop, shapely may run on QGIS's older GEOS, which rejects the
    # default (4 dimensions) with "WKB output dimension must be 2 or 3".
    qgs.fromWkb(shapely.to_wkb(geometry, output_dimension=2))
    qgs.convertToMultiType()
    return qgs


def from_qgs_geometry(geometry: QgsGeometry) -> Any:
    import shapely

    return shapely.from_wkb(bytes(geometry.asWkb()))


def add_polygon_features(
    sink: QgsFeatureSink,
    fields: QgsFields,
    geometries: list[Any],
    attributes: list[dict[str, Any]],
    feedback: QgsProcessingFeedback,
    extra: dict[str, Any] | None = None,
    transform: Callable[[QgsGeometry], None] | None = None,
) -> int:
    """Write shapely geometries with attribute dicts into a sink; returns the number written."""
    names = fields.names()
    written = 0
    for geometry, attrs in zip(geometries, attributes):
        if feedback.isCanceled():
            break
        feature = QgsFeature(fields)
        qgs = to_qgs_geometry(geometry)
        if transform is not None:
            transform(qgs)
        feature.setGeometry(qgs)
        values = {**attrs, **(extra or {})}
        feature.setAttributes([_plain(values.get(name)) for name in names])
        if not sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert):
            raise QgsProcessingException(f"Could not write a feature to the output: {sink.lastError()}")
        written += 1
    return written


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so QVariant accepts them."""
    return value.item() if hasattr(value, "item") else value


def crs_from_wkt(wkt: str | None) -> QgsCoordinateReferenceSystem:
    return QgsCoordinateReferenceSystem.fromWkt(wkt) if wkt else QgsCoordinateReferenceSystem()


class FeedbackAdapter:
    """The engine's progress(fraction)/is_canceled() callbacks over a QgsProcessingFeedback."""

    def __init__(self, feedback: QgsProcessingFeedback, start: float = 0.0, end: float = 1.0) -> None:
        self.feedback = feedback
        self.start = start
        self.end = end

    def progress(self, fraction: float) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        self.feedback.setProgress(100.0 * (self.start + (self.end - self.start) * fraction))

    def is_canceled(self) -> bool:
        return self.feedback.isCanceled()


class FootprintAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses set NAME/DISPLAY_NAME/GROUP/HELP and implement `initAlgorithm` and `perform`."""

    NAME = ""
    DISPLAY_NAME = ""
    GROUP = GROUP_DETECT
    HELP = ""

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:
        return self.tr(self.DISPLAY_NAME)

    def group(self) -> str:
        return self.tr(self.GROUP)

    def groupId(self) -> str:
        return self.GROUP.lower().replace(" ", "_")

    def shortHelpString(self) -> str:
        return self.tr(self.HELP)

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("footprint", text)

    def createInstance(self) -> FootprintAlgorithm:
        return type(self)()

    def canExecute(self) -> tuple[bool, str]:
        from .. import deps

        missing = deps.missing_dependencies()
        if missing:
            return False, deps.install_hint(missing)
        return True, ""

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        ok, message = self.canExecute()
        if not ok:
            raise QgsProcessingException(message)
        from ..core.errors import FootprintError

        try:
            return self.perform(parameters, context, feedback)
        except FootprintError as exc:
            raise QgsProcessingException(str(exc)) from None

    def perform(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        raise NotImplementedError
