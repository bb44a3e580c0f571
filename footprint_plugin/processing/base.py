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

# Torch-free (only the engine's error classes), so importing it keeps the provider loadable without deps.
from ..core.common import vocabulary as _vocabulary

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
    # GeoPackage rasters (GPKG:file:table) and /vsizip/ members are files GDAL opens, not paths on disk.
    if str(path).startswith(("GPKG:", "/vsi")):
        return path
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


_KINDS = {int: "int", float: "float", str: "str", bool: "bool"}


def _schema(fields: dict[str, type]) -> tuple[tuple[str, str], ...]:
    """A core schema (name -> Python type) as (name, kind) pairs for make_fields."""
    return tuple((name, _KINDS[kind]) for name, kind in fields.items())


# The one building schema lives in the core (torch-free vocabulary); the sink reads it from there.
BUILDING_FIELDS = _schema(_vocabulary.BUILDING_FIELDS)


def make_fields(spec: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> QgsFields:
    fields = QgsFields()
    for name, kind in spec:
        fields.append(QgsField(name, _field_type(kind)))
    return fields


def building_fields(with_tile: bool = False) -> QgsFields:
    """Fields of the building polygon layer (docs/ARCHITECTURE.md), plus `tile` in batch mode."""
    return make_fields(BUILDING_FIELDS + (_schema(_vocabulary.BATCH_FIELDS) if with_tile else ()))


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
    """QGIS's CRS for a WKT written by the engine (rasterio's newer GDAL/PROJ).

    QGIS's older PROJ sometimes reads such a WKT as an unnamed "Undefined" CRS; when it finds no
    authority code, GDAL identifies the EPSG code and QGIS builds the CRS from that instead.
    """
    if not wkt:
        return QgsCoordinateReferenceSystem()
    crs = QgsCoordinateReferenceSystem.fromWkt(wkt)
    if crs.isValid() and crs.authid():
        return crs
    from osgeo import osr

    reference = osr.SpatialReference()
    if reference.ImportFromWkt(wkt) == 0:
        reference.AutoIdentifyEPSG()
        code = reference.GetAuthorityCode(None)
        name = reference.GetAuthorityName(None)
        if code and name:
            identified = QgsCoordinateReferenceSystem(f"{name}:{code}")
            if identified.isValid():
                return identified
    return crs


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


def enum_names(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any]) -> dict[str, Any]:
    """Enum values given as numbers (MODEL=0, DEVICE=1: what `qgis_process help` documents) as option names.

    Our enums use static strings (a model's name stays valid when others are added); both forms work.
    """
    from qgis.core import QgsProcessingParameterEnum

    fixed = dict(parameters)
    for definition in algorithm.parameterDefinitions():
        if not isinstance(definition, QgsProcessingParameterEnum) or not definition.usesStaticStrings():
            continue
        value, options = fixed.get(definition.name()), definition.options()
        if isinstance(value, bool) or value in options:
            continue
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            index = int(value)
            if 0 <= index < len(options):
                fixed[definition.name()] = options[index]
    return fixed


def layer_destination(value: str) -> str:
    """A destination 'b.gpkg|layername=x' as QGIS's OGR URI for layer x in b.gpkg (the file's other layers are
    kept); QGIS itself would create a file literally named 'b.gpkg|layername=x.gpkg'. Other values unchanged."""
    from qgis.core import QgsDataSourceUri

    from ..core.io.paths import MULTI_LAYER_SUFFIXES, split_layer

    if "|" not in value or value.startswith(("ogr:", "postgres:", "postgis:", "memory:", "spatialite:")):
        return value
    path, layer = split_layer(value)
    if layer is None or path.suffix.lower() not in MULTI_LAYER_SUFFIXES:
        return value
    uri = QgsDataSourceUri()
    uri.setDatabase(str(path))
    uri.setDataSource("", layer, "geom")
    return f"ogr:{uri.uri(False)}"


def _destination_text(value: Any) -> str | None:
    """The destination string of a sink value (a string or a QgsProcessingOutputLayerDefinition), else None."""
    from qgis.core import QgsProcessingOutputLayerDefinition, QgsProperty

    if isinstance(value, QgsProcessingOutputLayerDefinition):
        sink = value.sink
        if sink.propertyType() == QgsProperty.Type.StaticProperty:
            return str(sink.staticValue())
        return None
    return value if isinstance(value, str) else None


def honour_layer_destinations(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any]) -> dict[str, Any]:
    """Every vector destination given as 'file.gpkg|layername=x' rewritten as QGIS's URI for that layer."""
    from qgis.core import QgsProcessingOutputLayerDefinition, QgsProperty

    fixed = dict(parameters)
    for definition in algorithm.destinationParameterDefinitions():
        if definition.type() not in ("sink", "vectorDestination"):
            continue
        value = fixed.get(definition.name())
        text = _destination_text(value)
        if text is None or layer_destination(text) == text:
            continue
        if isinstance(value, QgsProcessingOutputLayerDefinition):
            value = QgsProcessingOutputLayerDefinition(value)
            value.sink = QgsProperty.fromValue(layer_destination(text))
            fixed[definition.name()] = value
        else:
            fixed[definition.name()] = layer_destination(text)
    return fixed


def check_database_destinations(algorithm: QgsProcessingAlgorithm, parameters: dict[str, Any]) -> None:
    """Connect to every PostGIS destination before any work, so a wrong host or password fails in a second
    instead of after the inference; the message never shows the password."""
    from qgis.core import QgsDataSourceUri, QgsProviderRegistry

    from ..core.io.paths import scrub_credentials

    for definition in algorithm.destinationParameterDefinitions():
        text = _destination_text(parameters.get(definition.name()))
        provider, _, uri_text = (text or "").partition(":")
        if provider not in ("postgres", "postgis"):
            continue
        uri = QgsDataSourceUri(uri_text)
        where = f"{uri.host() or 'localhost'}:{uri.port() or '5432'}/{uri.database()}"
        try:
            connection = (
                QgsProviderRegistry.instance().providerMetadata("postgres").createConnection(uri.uri(False), {})
            )
            schemas = connection.schemas()
        except Exception as exc:  # noqa: BLE001 - QGIS raises QgsException or QgsProviderConnectionException
            raise QgsProcessingException(
                f"{definition.description()}: cannot connect to the PostGIS database {where} as user "
                f"'{uri.username()}' ({scrub_credentials(str(exc)).strip()}). Check the host, port, database, user "
                "and password (or the saved connection), and that the server is running."
            ) from None
        schema = uri.schema() or "public"
        if schema not in schemas:
            raise QgsProcessingException(
                f"{definition.description()}: the PostGIS database {where} has no schema '{schema}'. "
                f"Choose one of: {', '.join(schemas) or '(none)'}."
            )


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

    def checkParameterValues(  # noqa: N802 - QGIS override
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[bool, str]:
        return super().checkParameterValues(enum_names(self, parameters), context)

    def processAlgorithm(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        parameters = honour_layer_destinations(self, enum_names(self, parameters))
        ok, message = self.canExecute()
        if not ok:
            raise QgsProcessingException(message)
        from ..core.common.errors import FootprintError
        from ..core.io.paths import scrub_credentials
        from . import results

        results.remember_inputs(self, parameters, context)
        try:
            check_database_destinations(self, parameters)
            self._footprint_results = self.perform(parameters, context, feedback)
        except FootprintError as exc:
            raise QgsProcessingException(scrub_credentials(exc)) from None
        except QgsProcessingException as exc:
            # QGIS's own sink errors quote the destination URI, password included.
            raise QgsProcessingException(scrub_credentials(exc)) from None
        return self._footprint_results

    def postProcessAlgorithm(  # noqa: N802 - QGIS override
        self, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        """Every path (toolbox, batch, models, qgis_process, our button): styled, grouped outputs."""
        from . import results

        results.post_process(self, context, getattr(self, "_footprint_results", {}))
        return {}

    def perform(
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        raise NotImplementedError
