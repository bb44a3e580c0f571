"""Vector reading and writing through GDAL/OGR (osgeo, which ships with every QGIS).

Geometries are shapely objects; CRSs travel as WKT strings. Writes are atomic: a temporary
folder beside the target, then a rename, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import shapely
from shapely.geometry.base import BaseGeometry

from ..common.errors import InputError, OutputError
from ..common.geometry import polygonal_valid
from .atomic import temporary_sibling
from .paths import MULTI_LAYER_SUFFIXES, container_layers, gdal_path, is_gdal_path

DRIVERS_BY_SUFFIX = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".shp": "ESRI Shapefile",
    ".fgb": "FlatGeobuf",
    ".gml": "GML",
    ".kml": "KML",
    ".sqlite": "SQLite",
    ".csv": "CSV",
}


def _ogr():
    from osgeo import ogr, osr

    ogr.UseExceptions()
    osr.UseExceptions()
    return ogr, osr


@dataclass
class VectorData:
    geometries: list[BaseGeometry]
    attributes: list[dict[str, Any]]
    crs_wkt: Optional[str]
    n_fixed: int = 0
    n_dropped: int = 0
    warnings: list[str] = field(default_factory=list)


def _srs_from_wkt(wkt: Optional[str]):
    _, osr = _ogr()
    if not wkt:
        return None
    srs = osr.SpatialReference()
    srs.ImportFromWkt(wkt) if not wkt.upper().startswith("EPSG:") else srs.SetFromUserInput(wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def read_polygons(path: Path | str, target_crs_wkt: Optional[str] = None, layer: Optional[str] = None) -> VectorData:
    """Read polygon features, make them valid, optionally reproject to target_crs_wkt.

    Non-polygon parts are dropped; invalid geometries are repaired and counted in n_fixed.
    """
    ogr, osr = _ogr()
    path = Path(path)
    ogr_layer, dataset = _open_layer(path, layer)
    source_srs = ogr_layer.GetSpatialRef()
    if source_srs is not None:
        source_srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = None
    target_srs = _srs_from_wkt(target_crs_wkt) if target_crs_wkt else None
    if target_srs is not None and source_srs is not None and not source_srs.IsSame(target_srs):
        transform = osr.CoordinateTransformation(source_srs, target_srs)
    result = VectorData(
        [], [], target_crs_wkt if target_srs is not None else (source_srs.ExportToWkt() if source_srs else None)
    )
    if target_srs is not None and source_srs is None:
        result.warnings.append(f"{path.name} has no CRS; assuming it already uses the raster's CRS.")
    if source_srs is not None and source_srs.IsGeographic():
        _check_lonlat_extent(path, ogr_layer)
    defn = ogr_layer.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    for feature in ogr_layer:
        ogr_geom = feature.GetGeometryRef()
        if ogr_geom is None:
            result.n_dropped += 1
            continue
        ogr_geom = ogr_geom.Clone()
        if transform is not None:
            try:
                ogr_geom.Transform(transform)
            except RuntimeError as exc:
                raise InputError(
                    f"Cannot reproject {path.name} ({exc}): its coordinates do not fit its CRS. "
                    "Check the layer's CRS in QGIS (Layer Properties > Source) and save it again."
                ) from None
        geom = shapely.from_wkb(bytes(ogr_geom.ExportToIsoWkb()))
        geom, fixed = polygonal_valid(geom)
        result.n_fixed += int(fixed)
        if geom is None:
            result.n_dropped += 1
            continue
        result.geometries.append(geom)
        result.attributes.append({name: feature.GetField(name) for name in names})
    return result


def _open_layer(path: Path, layer: Optional[str]):
    """(OGR layer, its dataset, which must stay referenced) or an InputError in the user's words."""
    ogr, _ = _ogr()
    if not is_gdal_path(path) and not path.exists():
        raise InputError(f"Vector file not found: {path}. Check the path.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a vector file. Choose a GeoPackage, GeoJSON or Shapefile.")
    try:
        dataset = ogr.Open(gdal_path(path))
    except RuntimeError as exc:
        dataset, error = None, exc
    else:
        error = None
    if dataset is None:
        broken = _broken_json(path)
        if broken:
            raise InputError(f"{path} is broken JSON ({broken}). Fix it in a text editor or export the layer again.")
        raise InputError(
            f"GDAL cannot open {path} as a vector file ({error or 'unknown format'}). "
            "Is it a valid GeoPackage, GeoJSON or Shapefile? Export it again from QGIS."
        )
    if dataset.GetLayerCount() == 0:
        raise InputError(f"Vector file {path} has no layers. Choose a file with building polygons.")
    ogr_layer = dataset.GetLayerByName(layer) if layer else dataset.GetLayer(0)
    if ogr_layer is None:
        raise InputError(f"Vector file {path} has no layer named '{layer}'.")
    return ogr_layer, dataset


def _broken_json(path: Path) -> Optional[str]:
    if path.suffix.lower() not in (".json", ".geojson") or not path.is_file():
        return None
    import json

    try:
        json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError as exc:
        return str(exc)
    return None


def _check_lonlat_extent(path: Path, ogr_layer) -> None:
    """A layer read as longitude/latitude (GeoJSON without a 'crs') whose numbers are projected metres."""
    try:
        minx, maxx, miny, maxy = ogr_layer.GetExtent()
    except RuntimeError:
        return
    if max(abs(minx), abs(maxx)) > 180.0 + 1e-6 or max(abs(miny), abs(maxy)) > 90.0 + 1e-6:
        raise InputError(
            f"{path.name} has no usable CRS: it is read as longitude/latitude (as GeoJSON without a 'crs' says), "
            f"but its coordinates (e.g. x {minx:.0f}, y {miny:.0f}) are projected, such as UTM metres. "
            "In QGIS, set the layer's CRS and export it as GeoPackage, or add the CRS to the file."
        )


_FIELD_TYPES = {int: "Integer64", float: "Real", str: "String", bool: "Integer"}


def write_polygons(
    path: Path | str,
    geometries: Sequence[BaseGeometry],
    attributes: Sequence[dict[str, Any]],
    crs_wkt: Optional[str],
    fields: Optional[dict[str, type]] = None,
    layer_name: Optional[str] = None,
    driver: Optional[str] = None,
    extra_layers: Iterable[tuple[str, Sequence[BaseGeometry], Sequence[dict[str, Any]]]] = (),
) -> Path:
    """Write polygons (plus optional extra layers) atomically. Into an existing GeoPackage, only these layers
    are added or replaced (the others are kept); any other existing file is replaced whole.

    fields maps attribute name to python type (int, float, str, bool); inferred when omitted.
    """
    path = Path(path)
    driver = driver or DRIVERS_BY_SUFFIX.get(path.suffix.lower(), "GPKG")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"Output folder does not exist: {folder}. Create it or pick another path.")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"Output folder is not writable: {folder}. Pick a folder you can write to.")
    layers = [(layer_name or path.stem, geometries, attributes)] + list(extra_layers)
    # A folder named like every partial file (with our pid), so a run killed before cleaning up is
    # recognised and removed by the next one (atomic.remove_stale_partials).
    tmp_dir = temporary_sibling(path.with_suffix(""))
    try:
        tmp_dir.mkdir()
    except OSError as exc:
        raise OutputError(f"Could not write {path}: {exc}. Check free disk space and permissions.") from None
    try:
        tmp_path = tmp_dir / path.name
        dataset = _new_or_updated(path, tmp_path, driver, [name for name, _, _ in layers])
        srs = _srs_from_wkt(crs_wkt)
        for name, geoms, attrs in layers:
            _write_layer(dataset, name, geoms, attrs, srs, fields)
        dataset.FlushCache()
        dataset = None
        written = sorted(tmp_dir.iterdir())
        if not written:
            raise OutputError(f"GDAL wrote nothing for {path}.")
        for item in written:
            target = folder / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    except OSError as exc:
        raise OutputError(f"Could not write {path}: {exc}. Check free disk space and permissions.") from None
    except RuntimeError as exc:
        raise OutputError(f"Could not write {path}: {exc}.") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def _new_or_updated(path: Path, tmp_path: Path, driver: str, layer_names: Sequence[str]):
    """The dataset to write into at tmp_path: a copy of an existing GeoPackage without the layers about to be
    written (its other layers, e.g. `roads`, are kept), or a new file."""
    ogr, _ = _ogr()
    if path.suffix.lower() in MULTI_LAYER_SUFFIXES and path.is_file() and container_layers(path) is not None:
        shutil.copyfile(path, tmp_path)
        dataset = ogr.Open(str(tmp_path), update=1)
        replaced = {name.lower() for name in layer_names}
        for index in reversed(range(dataset.GetLayerCount())):
            if dataset.GetLayer(index).GetName().lower() in replaced:
                dataset.DeleteLayer(index)
        return dataset
    ogr_driver = ogr.GetDriverByName(driver)
    if ogr_driver is None:
        raise OutputError(f"GDAL has no vector driver '{driver}'. Use .gpkg, .geojson, .shp or .fgb.")
    return ogr_driver.CreateDataSource(str(tmp_path))


def _write_layer(dataset, name, geometries, attributes, srs, fields) -> None:
    ogr, _ = _ogr()
    layer = dataset.CreateLayer(name, srs=srs, geom_type=ogr.wkbMultiPolygon)
    if fields is None:
        fields = {}
        for attrs in attributes[:1]:
            fields = {key: type(value) if type(value) in _FIELD_TYPES else str for key, value in attrs.items()}
    field_index: dict[str, int] = {}
    for key, py_type in fields.items():
        ogr_type = {int: ogr.OFTInteger64, float: ogr.OFTReal, str: ogr.OFTString, bool: ogr.OFTInteger}[py_type]
        field_defn = ogr.FieldDefn(key, ogr_type)
        if py_type is bool:
            field_defn.SetSubType(ogr.OFSTBoolean)
        layer.CreateField(field_defn)
        # Drivers may launder names (Shapefile: 10 characters), so set values by position.
        field_index[key] = layer.GetLayerDefn().GetFieldCount() - 1
    layer.StartTransaction()
    defn = layer.GetLayerDefn()
    for geom, attrs in zip(geometries, attributes):
        feature = ogr.Feature(defn)
        for key in fields:
            value = attrs.get(key)
            if value is not None:
                feature.SetField(field_index[key], int(value) if isinstance(value, bool) else value)
        multi = (
            geom
            if geom.geom_type == "MultiPolygon"
            else shapely.MultiPolygon([geom])
            if geom.geom_type == "Polygon"
            else geom
        )
        feature.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(multi, output_dimension=2)))
        layer.CreateFeature(feature)
    layer.CommitTransaction()
