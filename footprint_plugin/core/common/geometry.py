"""Shared geometry helpers: polygonal parts of repaired geometries, and measuring in metres.

One public home for what polygons, regularize, evaluate and vector_io all need, so no module has
to reach into another's private helpers (which is what made polygons <-> regularize a cycle).
Depends only on numpy and shapely at import time; rasterio is imported where a CRS is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

# --------------------------------------------------------------------------- polygonal parts


def largest_polygon(geom: Optional[BaseGeometry]) -> Optional[BaseGeometry]:
    """The largest Polygon of a (made valid) geometry, or None: one building stays one polygon.

    make_valid can turn a pinched ring into a collection of polygons, lines and points; only the
    biggest polygon is the building, the rest is slivers.
    """
    if geom is None or geom.is_empty:
        return None
    if geom.geom_type == "Polygon":
        return geom
    parts = []
    for part in getattr(geom, "geoms", []):
        if part.geom_type == "Polygon":
            parts.append(part)
        elif part.geom_type == "MultiPolygon":
            parts.extend(part.geoms)
    return max(parts, key=lambda g: g.area) if parts else None


def polygonal_valid(geom: Optional[BaseGeometry]) -> tuple[Optional[BaseGeometry], bool]:
    """(valid 2D polygonal part of geom or None, whether it needed repairing).

    Unlike largest_polygon this keeps every polygon part: a reference layer's MultiPolygon is one
    feature and must stay whole when it is read.
    """
    if geom is None or geom.is_empty:
        return None, False
    if geom.has_z:
        geom = shapely.force_2d(geom)
    fixed = False
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
        fixed = True
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom, fixed
    if geom.geom_type == "GeometryCollection":
        parts = [g for g in geom.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        if parts:
            return shapely.union_all(parts), True
    return None, fixed


# --------------------------------------------------------------------------- metric CRSs


def utm_zone_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone holding lon/lat (326xx north, 327xx south)."""
    zone = int(min(max((lon + 180.0) // 6.0 + 1, 1), 60))
    return (32600 if lat >= 0 else 32700) + zone


def utm_crs_for(lon: float, lat: float) -> str:
    """'EPSG:326xx' / 'EPSG:327xx' of the UTM zone holding lon/lat."""
    return f"EPSG:{utm_zone_epsg(lon, lat)}"


def is_mercator(crs: Any) -> bool:
    """Web/world Mercator: metre units that stretch with latitude (1.13x at 27 N), so not for measuring.

    crs is anything with to_wkt() (a rasterio CRS).
    """
    wkt = crs.to_wkt().lower()
    return "mercator" in wkt and "transverse" not in wkt


def crs_is_metric(crs_wkt: Optional[str]) -> bool:
    """True for a projected CRS in metres that is not Mercator: areas and lengths can be read off directly."""
    if not crs_wkt:
        return False
    from rasterio.crs import CRS

    crs = CRS.from_user_input(crs_wkt)
    if crs.is_geographic or is_mercator(crs):
        return False
    try:
        return abs(float(crs.linear_units_factor[1]) - 1.0) < 1e-9
    except Exception:  # noqa: BLE001 - a CRS without linear unit information is not known to be metric
        return False


@dataclass
class Metric:
    """Pixel size in metres and how to measure map-unit geometries in metres."""

    gsd_m: float
    unit_factor: float = 1.0  # metres per CRS unit (projected CRSs)
    to_metric: Optional[Callable[[np.ndarray], np.ndarray]] = None  # geographic CRSs: geoms -> local UTM
    warnings: list[str] = field(default_factory=list)
    # Pixel steps (column, row) -> ground metres near the centre: (a, b, d, e) of x' = a*c + b*r, y' = d*c + e*r.
    # Regularizing in this frame keeps right angles right on the ground, also for lon/lat pixels.
    jacobian: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 1.0)


def metric_for(crs_wkt: Optional[str], transform: Any, width: int, height: int) -> Metric:
    """Ground sample distance and a metric measuring function for a raster grid (rasterio Affine)."""
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    linear = (transform.a, transform.b, transform.d, transform.e)
    if not crs_wkt:
        return Metric(
            math.sqrt(pixel_area), warnings=["The raster has no CRS; sizes assume metre units."], jacobian=linear
        )
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp_transform

    crs = CRS.from_user_input(crs_wkt)
    if not crs.is_geographic and not is_mercator(crs):
        try:
            factor = float(crs.linear_units_factor[1])
        except Exception:  # noqa: BLE001 - CRSs without linear units: assume metres
            factor = 1.0
        return Metric(
            math.sqrt(pixel_area) * factor, unit_factor=factor, jacobian=tuple(value * factor for value in linear)
        )
    cx, cy = transform * (width / 2.0, height / 2.0)
    lons, lats = warp_transform(crs, "EPSG:4326", [cx], [cy])
    utm = CRS.from_user_input(utm_crs_for(lons[0], lats[0]))

    def to_metric(geoms: np.ndarray) -> np.ndarray:
        def project(coords: np.ndarray) -> np.ndarray:
            if len(coords) == 0:
                return coords
            xs, ys = warp_transform(crs, utm, coords[:, 0], coords[:, 1])
            return np.column_stack([xs, ys])

        return shapely.transform(geoms, project)

    corners = np.array(
        [
            transform * (width / 2.0, height / 2.0),
            transform * (width / 2.0 + 1, height / 2.0),
            transform * (width / 2.0, height / 2.0 + 1),
        ]
    )
    xs, ys = warp_transform(crs, utm, corners[:, 0], corners[:, 1])
    ax, ay = xs[1] - xs[0], ys[1] - ys[0]
    bx, by = xs[2] - xs[0], ys[2] - ys[0]
    return Metric(math.sqrt(abs(ax * by - ay * bx)), to_metric=to_metric, jacobian=(ax, bx, ay, by))


def measure(geoms: np.ndarray, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """(area m², perimeter m) of map-unit geometries."""
    if metric.to_metric is not None:
        projected = metric.to_metric(geoms)
        return shapely.area(projected), shapely.length(projected)
    return shapely.area(geoms) * metric.unit_factor**2, shapely.length(geoms) * metric.unit_factor
