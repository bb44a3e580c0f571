"""Training chips: rasters resampled to the model's GSD, split by area, and random chip windows.

Each training raster is read once at the model's ground sample distance (so a 0.075 m aerial
mosaic and a 0.5 m satellite tile look alike to the network), scaled exactly as inference will
scale it, and kept in memory with its targets. Chips are random windows drawn from it each epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from affine import Affine
from shapely.geometry.base import BaseGeometry

from ..common.errors import InputError
from ..engine.scaling import apply_scaling, compute_scaling_stats
from ..io import raster_io
from .labels import buildings_on_valid_pixels, load_aoi, load_labels, rasterize_region, rasterize_targets

# A raster larger than this (after resampling to the model GSD) is refused: it would not fit in memory.
MAX_PIXELS_PER_RASTER = 120_000_000


@dataclass
class PreparedRaster:
    """One raster at the model's GSD, scaled, with its targets and masks (all in memory)."""

    name: str
    path: Path
    image: np.ndarray  # (C, H, W) float32, scaled like inference does
    targets: np.ndarray  # (K, H, W) uint8 0/1
    supervised: np.ndarray  # (H, W) bool: valid imagery inside the area of interest
    transform: Affine
    crs_wkt: str
    labels: list[BaseGeometry]  # every label polygon in the raster CRS
    source_gsd_m: float
    n_labels_in_raster: int = 0
    n_fixed: int = 0
    warnings: list[str] = field(default_factory=list)
    role: str = "train"  # "train", "val" (whole raster), "test" (whole raster, scored at the end)
    val_mask: Optional[np.ndarray] = None  # (H, W) bool: pixels held out for validation (spatial block)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[2]

    def train_weight(self) -> np.ndarray:
        """Pixels that supervise training: supervised and not held out."""
        if self.role != "train":
            return np.zeros(self.shape, bool)
        if self.val_mask is None:
            return self.supervised
        return self.supervised & ~self.val_mask

    def eval_mask(self) -> Optional[np.ndarray]:
        """Pixels scored in validation/test, or None when this raster has none."""
        if self.role in ("val", "test"):
            return self.supervised
        if self.val_mask is not None and (self.val_mask & self.supervised).any():
            return self.val_mask & self.supervised
        return None


def ground_pixel_size(dataset) -> tuple[float, float]:
    """(x, y) pixel size in ground metres at the raster centre, for any CRS (metres, degrees, Mercator)."""
    size = raster_io.ground_pixel_size_m(dataset)
    if size is None:
        raise InputError(
            f"{dataset.name} has no usable CRS. Assign one in QGIS (Raster > Projections > Assign Projection)."
        )
    return size


def read_at_gsd(
    path: Path, gsd_m: Optional[float], bands: Optional[list[int]] = None
) -> tuple[np.ndarray, np.ndarray, Affine, float]:
    """Raw bands (C, H, W), valid mask, transform and source GSD, resampled to gsd_m when given.

    Reads through raster_io (same open checks and validity rules as inference). Without `bands`,
    every data band is read (an alpha band goes into the valid mask, not the data).
    """
    from rasterio.enums import Resampling

    with raster_io.opened(path) as dataset:
        gx, gy = ground_pixel_size(dataset)
        source_gsd = math.sqrt(gx * gy)
        # Within 2 % of the model GSD: keep the pixels as they are rather than blur them by resampling.
        if gsd_m is None or abs(source_gsd / gsd_m - 1.0) < 0.02:
            out_h, out_w = dataset.height, dataset.width
        else:
            out_h = max(1, int(round(dataset.height * gy / gsd_m)))
            out_w = max(1, int(round(dataset.width * gx / gsd_m)))
        if out_h * out_w > MAX_PIXELS_PER_RASTER:
            raise InputError(
                f"{Path(path).name} is {out_w} x {out_h} pixels at the model's GSD: too large to train on in memory. "
                "Clip it to the labelled area (or pass an area of interest) and try again."
            )
        if bands is None:
            alpha = raster_io.alpha_band(dataset)
            bands = [b for b in range(1, dataset.count + 1) if b != alpha]
        if (out_h, out_w) == (dataset.height, dataset.width):
            raw, valid = raster_io.read_block(dataset, bands)
        else:
            downsampling = out_h < dataset.height
            resampling = Resampling.average if downsampling else Resampling.bilinear
            raw, valid = raster_io.read_block(dataset, bands, out_shape=(out_h, out_w), resampling=resampling)
        transform = dataset.transform * Affine.scale(dataset.width / out_w, dataset.height / out_h)
    return raw, valid, transform, source_gsd


def raster_info(path: Path) -> dict[str, Any]:
    """Band count, dtype, CRS WKT and bounds, without reading pixels."""
    import rasterio

    path = Path(path)
    if not path.exists():
        raise InputError(f"Raster not found: {path}. Check the path.")
    try:
        with rasterio.open(path) as dataset:
            if dataset.crs is None:
                raise InputError(f"{path.name} has no CRS. Assign one in QGIS before training.")
            from rasterio.enums import ColorInterp

            alpha = [i for i, ci in enumerate(dataset.colorinterp) if ci == ColorInterp.alpha]
            return {
                "count": dataset.count - len(alpha[-1:]),
                "dtype": dataset.dtypes[0],
                "crs_wkt": dataset.crs.to_wkt(),
                "bounds": tuple(dataset.bounds),
                "crs": dataset.crs,
            }
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"Cannot open raster {path}: {exc}. Is it a GeoTIFF/VRT that GDAL can read?") from None


def prepare_raster(
    raster_path: Path,
    labels_path: Path,
    aoi_path: Optional[Path],
    name: str,
    card,
    heads: Sequence[str],
    boundary_width_m: float,
    require_overlap: bool = True,
) -> PreparedRaster:
    """Read, resample, scale and rasterise one (raster, labels, AOI) pair at the card's GSD.

    require_overlap=False accepts a raster that no label touches (an all-background tile of a
    multi-tile area whose other tiles hold the buildings).
    """
    raster_path, labels_path = Path(raster_path), Path(labels_path)
    info = raster_info(raster_path)
    labels = load_labels(labels_path, info["crs_wkt"])
    if require_overlap:
        check_overlap(raster_path, labels_path, info["bounds"], labels.geometries)
    stats = compute_scaling_stats(raster_path, card)
    raw, valid, transform, source_gsd = read_at_gsd(raster_path, card.gsd_m, list(stats.band_indexes))
    image = np.ascontiguousarray(apply_scaling(raw, valid, stats, card), dtype=np.float32)
    del raw
    shape = valid.shape
    supervised = valid.copy()
    warnings = list(labels.warnings)
    if aoi_path is not None:
        aoi = load_aoi(aoi_path, info["crs_wkt"])
        inside = rasterize_region(aoi, transform, shape)
        if not inside.any():
            raise InputError(
                f"The area of interest {Path(aoi_path).name} does not overlap {raster_path.name}. Draw it over the imagery."
            )
        if not any(g.intersects(a) for g in labels.geometries for a in aoi):
            raise InputError(
                f"The area of interest {Path(aoi_path).name} contains no building from {labels_path.name}. "
                "Draw it where buildings are labelled (inside it, every unlabelled pixel counts as background)."
            )
        supervised &= inside
    pixel_size = card.gsd_m if card.gsd_m else source_gsd
    targets = rasterize_targets(labels.geometries, transform, shape, heads, pixel_size, boundary_width_m)
    n_inside = len(buildings_on_valid_pixels(labels.geometries, transform, valid, min_inside_fraction=0.01))
    if n_inside == 0:
        warnings.append(f"No label of {labels_path.name} falls on valid pixels of {raster_path.name}.")
    return PreparedRaster(
        name=name or raster_path.stem,
        path=raster_path,
        image=image,
        targets=targets,
        supervised=supervised,
        transform=transform,
        crs_wkt=info["crs_wkt"],
        labels=labels.geometries,
        source_gsd_m=source_gsd,
        n_labels_in_raster=n_inside,
        n_fixed=labels.n_fixed,
        warnings=warnings,
    )


def check_overlap(raster_path: Path, labels_path: Path, bounds, geometries: Sequence[BaseGeometry]) -> None:
    import shapely

    frame = shapely.box(*bounds)
    if not any(g.intersects(frame) for g in geometries):
        raise InputError(
            f"No polygon of {labels_path.name} overlaps {raster_path.name}. Check that the labels belong to this "
            "raster (both layers should line up in QGIS); labels in another CRS are reprojected automatically."
        )


# ---------------------------------------------------------------------------------------------
# Split by area


def _lonlat_grid(raster: PreparedRaster, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lon/lat of a coarse pixel grid (every `step` pixels), which of those are supervised, and which are buildings."""
    from rasterio.warp import transform as warp_transform

    rows, cols = raster.shape
    rr, cc = np.mgrid[0:rows:step, 0:cols:step]
    xs, ys = raster.transform * (cc.ravel() + 0.5, rr.ravel() + 0.5)
    lons, lats = warp_transform(raster.crs_wkt, "EPSG:4326", list(np.asarray(xs, float)), list(np.asarray(ys, float)))
    supervised = raster.supervised[rr, cc]
    buildings = supervised & (raster.targets[0][rr, cc] > 0)
    return np.asarray(lons).reshape(rr.shape), np.asarray(lats).reshape(rr.shape), supervised, buildings


def assign_spatial_blocks(rasters: Sequence[PreparedRaster], val_fraction: float) -> None:
    """Hold out a strip at one end of each area for validation, never used for training.

    The strip is cut in lon/lat so that it holds `val_fraction` of the area's building pixels
    (or of its supervised pixels when it has hardly any buildings),
    across all rasters of the area: the z19/z20/z21 mosaics of one place, or neighbouring tiles,
    put the same ground on the same side.
    """
    by_area: dict[str, list[PreparedRaster]] = {}
    for raster in rasters:
        if raster.role == "train":
            by_area.setdefault(raster.name, []).append(raster)
    for members in by_area.values():
        grids = []
        for raster in members:
            step = max(1, min(raster.shape) // 256)
            grids.append((raster, step, *_lonlat_grid(raster, step)))
        lons = np.concatenate([g[2][g[4]] for g in grids])
        lats = np.concatenate([g[3][g[4]] for g in grids])
        if lons.size == 0:
            continue
        mid_lat = float(np.median(lats))
        along_x = (lons.max() - lons.min()) * math.cos(math.radians(mid_lat)) >= lats.max() - lats.min()
        # Cut by building pixels when there are enough: a strip of empty water or fields would validate nothing.
        building_lons = np.concatenate([g[2][g[5]] for g in grids])
        if building_lons.size >= 20:
            lons, lats = building_lons, np.concatenate([g[3][g[5]] for g in grids])
        # East end along x, south end along y: the held-out strip holds val_fraction of the labelled ground.
        cut = float(np.quantile(lons, 1.0 - val_fraction)) if along_x else float(np.quantile(lats, val_fraction))
        for raster, step, grid_lons, grid_lats, _supervised, _buildings in grids:
            coarse = grid_lons >= cut if along_x else grid_lats <= cut
            rows, cols = raster.shape
            full = np.repeat(np.repeat(coarse, step, axis=0), step, axis=1)[:rows, :cols]
            raster.val_mask = np.ascontiguousarray(full)


# ---------------------------------------------------------------------------------------------
# Chip sampling


@dataclass
class ChipWindow:
    raster_index: int
    row: int
    col: int
    size: int  # source window size in pixels (chip_size times the scale jitter)
    has_buildings: bool


class ChipSampler:
    """Random chip windows over the training pixels, with empty chips undersampled to a ratio."""

    def __init__(
        self, rasters: Sequence[PreparedRaster], chip_size: int, empty_chip_ratio: float, min_supervised: float = 0.2
    ):
        self.rasters = list(rasters)
        self.chip_size = chip_size
        self.empty_chip_ratio = empty_chip_ratio
        self.min_supervised = min_supervised
        self._weight_integrals = []
        self._positive_integrals = []
        self._train_pixels = []
        self._weights = []
        for raster in self.rasters:
            weight = raster.train_weight()
            self._weights.append(weight)
            self._train_pixels.append(int(weight.sum()))
            self._weight_integrals.append(_integral(weight))
            self._positive_integrals.append(_integral((raster.targets[0] > 0) & weight))

    @property
    def train_pixels(self) -> int:
        return sum(self._train_pixels)

    def auto_chips_per_epoch(
        self, batch_size: int, coverage: float = 2.0, minimum: int = 32, maximum: int = 1024
    ) -> int:
        chips = int(coverage * self.train_pixels / self.chip_size**2)
        chips = min(max(chips, minimum), maximum)
        return max(batch_size, chips // batch_size * batch_size)

    def sample(self, count: int, rng: np.random.Generator, scale_jitter: float = 0.0) -> list[ChipWindow]:
        if self.train_pixels == 0:
            raise InputError("No training pixels left: every labelled pixel is masked, outside the AOI or held out.")
        probabilities = np.asarray(self._train_pixels, float) / self.train_pixels
        max_empty = int(round(count * self.empty_chip_ratio))
        positives: list[ChipWindow] = []
        empties: list[ChipWindow] = []
        spare_empties: list[ChipWindow] = []
        for _attempt in range(count * 50):
            if len(positives) + len(empties) >= count:
                break
            index = int(rng.choice(len(self.rasters), p=probabilities))
            scale = float(np.exp(rng.uniform(-scale_jitter, scale_jitter))) if scale_jitter > 0 else 1.0
            size = max(16, int(round(self.chip_size * scale)))
            rows, cols = self.rasters[index].shape
            row = int(rng.integers(min(0, rows - size), max(0, rows - size) + 1))
            col = int(rng.integers(min(0, cols - size), max(0, cols - size) + 1))
            r0, r1, c0, c1 = max(row, 0), min(row + size, rows), max(col, 0), min(col + size, cols)
            supervised = _window_sum(self._weight_integrals[index], r0, r1, c0, c1)
            if supervised < self.min_supervised * size * size and supervised < 0.5 * self._train_pixels[index]:
                continue
            has_buildings = _window_sum(self._positive_integrals[index], r0, r1, c0, c1) > 0
            window = ChipWindow(index, row, col, size, has_buildings)
            if has_buildings:
                positives.append(window)
            elif len(empties) < max_empty:
                empties.append(window)
            elif len(spare_empties) < count:
                spare_empties.append(window)
        chosen = positives + empties
        # Too few building chips (sparse labels): fill up with empty ones rather than train on nothing.
        chosen += spare_empties[: max(0, count - len(chosen))]
        if not chosen:
            raise InputError("Could not draw any training chip: the labelled area is too small or fully masked.")
        order = rng.permutation(len(chosen))
        return [chosen[i] for i in order]

    def extract(self, window: ChipWindow) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image C,S,S float32, targets K,S,S float32, weight S,S float32) for a window, zero-padded."""
        raster = self.rasters[window.raster_index]
        image = _crop(raster.image, window.row, window.col, window.size)
        targets = _crop(raster.targets, window.row, window.col, window.size).astype(np.float32)
        weight = _crop(self._weights[window.raster_index][None], window.row, window.col, window.size)[0].astype(
            np.float32
        )
        return image, targets, weight


def _integral(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=out[1:, 1:])
    return out


def _window_sum(integral: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> int:
    if r1 <= r0 or c1 <= c0:
        return 0
    return int(integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0])


def _crop(array: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """array[:, row:row+size, col:col+size] with zero padding where the window leaves the array."""
    channels, rows, cols = array.shape
    out = np.zeros((channels, size, size), array.dtype)
    r0, r1, c0, c1 = max(row, 0), min(row + size, rows), max(col, 0), min(col + size, cols)
    if r1 > r0 and c1 > c0:
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = array[:, r0:r1, c0:c1]
    return out
