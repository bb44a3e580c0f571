"""Raster input and output through rasterio: validated opening, validity masks, ground GSD,
windowed reads, and the streamed, atomically written probability GeoTIFF.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ..common.errors import InputError, OutputError
from .atomic import remove_quietly, temporary_sibling
from .gdal_errors import WriteErrors
from .paths import check_folder_writable, gdal_path, is_gdal_path

EARTH_RADIUS_M = 6371008.8
HEADS_TAG = "FOOTPRINT_HEADS"
UINT8_NODATA = 255
UINT8_SCALE = 1.0 / 254.0
OUTPUT_BLOCK = 256
# GDAL's block cache must hold a strip of source blocks for a row of tiles (overlapping strips
# then reuse decoded blocks instead of decompressing them twice).
GDAL_CACHE_MB = 256


_PROJ_LOCK = threading.Lock()
_bundled_proj_data: Optional[str] = None  # "" once checked and rasterio ships no PROJ data


def use_bundled_proj_data() -> Optional[str]:
    """Keep rasterio's own PROJ on the proj.db its wheel ships, for the rest of the process.

    Returns that folder, or None where rasterio has none (a build on the system's GDAL and PROJ,
    which PROJ_DATA / PROJ_LIB then rightly describe). Safe to call from any thread, any number of times.

    Why: rasterio hands os.environ's PROJ_DATA / PROJ_LIB to its GDAL not only at import but each time
    an outermost rasterio.Env starts (every rasterio.open outside an Env, in every thread). QGIS's
    launchers (OSGeo4W, QGIS.app), conda and users' shells set them for QGIS's older PROJ, whose
    proj.db the wheel's PROJ rejects ("DATABASE.LAYOUT.VERSION.MINOR = 2 whereas a number >= 6 is
    expected"): EPSG look-ups then fail and CRSs lose their EPSG code, but only in PROJ contexts made
    after the switch (new worker threads), so it shows up late and only sometimes. os.environ is left as
    it is: QGIS, pyproj and the programs QGIS starts need those variables for their own PROJ.
    """
    global _bundled_proj_data
    if _bundled_proj_data is None:
        with _PROJ_LOCK:
            if _bundled_proj_data is None:
                _bundled_proj_data = _pin_rasterio_proj_data()
    return _bundled_proj_data or None


def _pin_rasterio_proj_data() -> str:
    """Point rasterio's PROJ at its wheel's data and make rasterio's later re-reads of os.environ keep it."""
    from rasterio import _env

    folder = _env.PROJDataFinder().search_wheel()
    setter = getattr(_env, "set_proj_data_search_path", None)
    if not folder or setter is None:
        return ""

    def keep_bundled(path: str) -> None:
        # GDALEnv.start calls this module global with os.environ's value; the wheel's PROJ needs its own.
        del path
        setter(folder)

    _env.set_proj_data_search_path = keep_bundled
    setter(folder)  # also repairs a search path rasterio already took from the environment at import
    return str(folder)


def _ignore_not_georeferenced() -> None:
    """Rasters without a CRS are allowed (with a warning in the result), so rasterio's own warning is noise.

    A process-wide filter, not catch_warnings(), which is not thread-safe (QGIS runs tasks in threads).
    """
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


# GDAL's auxiliary files (PAM): without this, reading statistics or metadata may write `<input>.aux.xml`
# beside (or, for /vsizip/, inside) the user's raster. The engine never writes next to an input.
NO_SIDECARS = {"GDAL_PAM_ENABLED": "NO"}


def gdal_env():
    """rasterio.Env with a block cache sized for strip reads, no auxiliary files, and rasterio's own PROJ data."""
    import rasterio

    use_bundled_proj_data()
    _ignore_not_georeferenced()
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024, GDAL_NUM_THREADS="ALL_CPUS", **NO_SIDECARS)


def _check_plain_file(path: Path) -> None:
    """Missing, empty or folder paths, in the user's words (GDAL names such as /vsizip/ are left to GDAL)."""
    if not path.exists():
        raise InputError(f"Raster not found: {path}. Check the path.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a raster. Choose a GeoTIFF, VRT or another GDAL raster.")
    if path.stat().st_size == 0:
        raise InputError(f"Raster {path} is an empty file (0 bytes). Re-export or download it again.")
    if path.suffix.lower() == ".vrt":
        missing = missing_vrt_sources(path)
        if missing:
            listed = ", ".join(str(m) for m in missing[:3]) + (
                f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            )
            raise InputError(
                f"The VRT {path} lists source files that do not exist: {listed}. "
                "Put them back, or rebuild the VRT (in QGIS: Raster > Miscellaneous > Build Virtual Raster)."
            )


def missing_vrt_sources(path: Path) -> list[Path]:
    """The source files a VRT lists that are not on disk (GDAL's own names such as /vsizip/ are not checked)."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError):
        return []  # not XML: GDAL's open says what is wrong
    missing: list[Path] = []
    for element in root.iter("SourceFilename"):
        name = (element.text or "").strip()
        if not name or is_gdal_path(name):
            continue
        source = path.parent / name if element.get("relativeToVRT") == "1" else Path(name)
        if not source.exists() and source not in missing:
            missing.append(source)
    return missing


def open_raster(path: Union[str, Path]):
    """Open a raster GDAL can read; missing, corrupt or empty files raise InputError. No .aux.xml is ever written."""
    import rasterio
    from rasterio.errors import RasterioIOError

    use_bundled_proj_data()
    _ignore_not_georeferenced()
    path = Path(path)
    # /vsizip/..., GPKG:file.gpkg:table and other GDAL names are opened by GDAL, not checked as files.
    gdal_name = is_gdal_path(path)
    if not gdal_name:
        _check_plain_file(path)
    try:
        # PAM is decided when GDAL opens the dataset, so the setting holds for the dataset's whole life.
        with rasterio.Env(**NO_SIDECARS):
            dataset = rasterio.open(gdal_path(path) if gdal_name else path)
    except RasterioIOError as exc:
        if "dimensions" in str(exc).lower():
            raise InputError(f"Raster {path} is empty ({exc}). Choose a raster with pixels.") from None
        raise InputError(
            f"GDAL cannot read {path} ({exc}). The file is corrupt or not a raster; re-export it as a GeoTIFF."
        ) from None
    except Exception as exc:  # rasterio raises a few other types for truncated headers
        raise InputError(f"Cannot open {path} as a raster ({exc}). Re-export it as a GeoTIFF.") from None
    if dataset.width < 1 or dataset.height < 1 or dataset.count < 1:
        shape = f"{dataset.width} x {dataset.height} pixels, {dataset.count} bands"
        dataset.close()
        raise InputError(f"Raster {path} is empty ({shape}). Choose a raster with pixels.")
    return dataset


@contextlib.contextmanager
def opened(dataset_or_path: Any) -> Iterator[Any]:
    """Yield an open dataset: the given one (left open) or one opened from a path (closed after)."""
    if hasattr(dataset_or_path, "read") and hasattr(dataset_or_path, "transform"):
        yield dataset_or_path
        return
    dataset = open_raster(dataset_or_path)
    try:
        yield dataset
    finally:
        dataset.close()


def alpha_band(dataset) -> Optional[int]:
    """1-based index of an alpha band (e.g. the A of RGBA), or None."""
    from rasterio.enums import ColorInterp

    alphas = [i + 1 for i, interp in enumerate(dataset.colorinterp) if interp == ColorInterp.alpha]
    return alphas[-1] if alphas and dataset.count > 1 else None


def _haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    lon1, lat1, lon2, lat2 = map(math.radians, (lon1, lat1, lon2, lat2))
    a = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def ground_pixel_size_m(dataset) -> Optional[tuple[float, float]]:
    """(x, y) pixel size in ground metres at the raster centre, for any CRS (metres, feet, degrees,
    Web Mercator, whose 'metres' are not ground metres away from the equator). None without a CRS."""
    from rasterio.warp import transform as warp_transform

    if dataset.crs is None or dataset.transform.is_identity:
        return None  # no geotransform: GDAL's default (1 unit pixels) means nothing on the ground
    col, row = dataset.width / 2.0, dataset.height / 2.0
    t = dataset.transform
    points = [t * (col, row), t * (col + 1, row), t * (col, row + 1)]
    try:
        lons, lats = warp_transform(dataset.crs, "EPSG:4326", [p[0] for p in points], [p[1] for p in points])
    except Exception:  # a local/engineering CRS that cannot reach lon/lat: trust its linear units
        factor = 1.0
        with contextlib.suppress(Exception):
            factor = float(dataset.crs.linear_units_factor[1])
        return abs(t.a * factor) or abs(t.b * factor), abs(t.e * factor) or abs(t.d * factor)
    gx = _haversine_m(lons[0], lats[0], lons[1], lats[1])
    gy = _haversine_m(lons[0], lats[0], lons[2], lats[2])
    if not (gx > 0 and gy > 0 and math.isfinite(gx) and math.isfinite(gy)):
        return None
    return gx, gy


def raster_gsd_m(dataset) -> Optional[float]:
    """Ground sample distance in metres (geometric mean of x and y), or None without a usable CRS."""
    size = ground_pixel_size_m(dataset)
    return None if size is None else math.sqrt(size[0] * size[1])


@dataclass
class RasterInfo:
    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs_wkt: Optional[str]
    gsd_m: Optional[float]
    nodata: Optional[float]
    has_mask: bool
    alpha_band: Optional[int]
    tiled: bool


def describe_raster(path: Union[str, Path]) -> RasterInfo:
    """Size, bands, CRS and GSD without reading pixels (for dialogs and checks)."""
    from rasterio.enums import MaskFlags

    with opened(path) as ds:
        flags = {flag for band_flags in ds.mask_flag_enums for flag in band_flags}
        return RasterInfo(
            path=str(path),
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtype=ds.dtypes[0],
            crs_wkt=ds.crs.to_wkt() if ds.crs else None,
            gsd_m=raster_gsd_m(ds),
            nodata=ds.nodata,
            has_mask=bool(flags & {MaskFlags.per_dataset, MaskFlags.alpha, MaskFlags.nodata}),
            alpha_band=alpha_band(ds),
            tiled=bool(ds.block_shapes and ds.block_shapes[0][1] < ds.width),
        )


def read_failure_message(name: Any, exc: BaseException) -> str:
    """What to tell a user when GDAL fails to read pixels (truncated file, VRT source missing)."""
    text = str(exc).strip() or type(exc).__name__
    hint = "Re-export it as a GeoTIFF (in QGIS: right-click the layer > Export > Save As…)."
    if str(name).lower().endswith(".vrt") or "vrt" in text.lower():
        hint = "Check that every source file the VRT lists exists and is readable, or rebuild the VRT."
    return f"GDAL cannot read the pixels of {name} ({text}). The file is truncated or corrupt. {hint}"


@contextlib.contextmanager
def read_errors(dataset) -> Iterator[None]:
    """Turn GDAL read failures into an InputError that names the file and says what to do."""
    from rasterio.errors import RasterioError

    try:
        yield
    except (RasterioError, RuntimeError, OSError) as exc:
        raise InputError(read_failure_message(getattr(dataset, "name", "the raster"), exc)) from None


def read_block(
    dataset,
    band_indexes: Sequence[int],
    window=None,
    out_shape: Optional[tuple[int, int]] = None,
    resampling=None,
) -> tuple[np.ndarray, np.ndarray]:
    """(data (C, h, w), valid (h, w) bool) for a window, optionally resampled to out_shape.

    A pixel is valid when no read band is nodata or NaN and the dataset mask / alpha allows it.
    """
    from rasterio.enums import MaskFlags, Resampling

    resampling = resampling if resampling is not None else Resampling.nearest
    shape = None if out_shape is None else (len(band_indexes), int(out_shape[0]), int(out_shape[1]))
    with read_errors(dataset):
        data = dataset.read(list(band_indexes), window=window, out_shape=shape, resampling=resampling)
    valid = np.ones(data.shape[1:], dtype=bool)
    if data.dtype.kind in "fc":
        valid &= np.isfinite(data).all(axis=0)
    flags = [dataset.mask_flag_enums[b - 1] for b in band_indexes]
    if resampling == Resampling.nearest:
        for k, band in enumerate(band_indexes):
            nodata = dataset.nodatavals[band - 1]
            if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
                valid &= data[k] != nodata
        if any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags):
            with read_errors(dataset):
                mask = dataset.read_masks(band_indexes[0], window=window, out_shape=shape[1:] if shape else None)
            valid &= mask > 0
    elif any(MaskFlags.all_valid not in f for f in flags):
        # Interpolated values near nodata are not comparable to the nodata value: use GDAL's masks.
        with read_errors(dataset):
            masks = dataset.read_masks(
                list(band_indexes), window=window, out_shape=shape, resampling=Resampling.nearest
            )
        valid &= (masks > 0).all(axis=0)
    return data, valid


# ---------------------------------------------------------------------------------------------
# Output


def check_output_writable(out_path: Union[str, Path]) -> Path:
    """Raise OutputError now (not after an hour of inference) if out_path cannot be written."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise OutputError(f"Output path {out_path} is a folder; give a file name such as probability.tif.")
    return check_folder_writable(out_path, label=None)


class _ColumnRows:
    """Rows of one column window, buffered to whole 256-row block strips (each block written once)."""

    def __init__(self, first: int, stop: int) -> None:
        self.first, self.stop = first, stop
        self.rows_written = 0
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0


class ProbabilityWriter:
    """Streams probability rows into a temporary tiled GeoTIFF; ``commit()`` turns it into a Cloud
    Optimized GeoTIFF (full-resolution image first, overviews after) and renames it into place.

    Rows arrive top to bottom in any chunk size, for the full width or for column windows whose
    edges are multiples of 256 (each window on its own top to bottom); they are buffered to whole
    256-row block strips, so each compressed block is written exactly once.
    """

    def __init__(
        self,
        out_path: Union[str, Path],
        width: int,
        height: int,
        heads: Sequence[str],
        crs: Any,
        transform: Any,
        output_dtype: str = "uint8",
        tags: Optional[dict[str, str]] = None,
    ) -> None:
        if output_dtype not in ("uint8", "float32"):
            raise OutputError(f"output_dtype must be 'uint8' or 'float32', not {output_dtype!r}.")
        self.out_path = Path(out_path)
        target = self.out_path if self.out_path.suffix else self.out_path.with_suffix(".tif")
        self.tmp_path = temporary_sibling(target)  # streamed here (fast compression)
        self.cog_path = temporary_sibling(target)  # the final layout, renamed into place
        self.width, self.height, self.heads = width, height, list(heads)
        self.dtype = output_dtype
        self._windows: dict[tuple[int, int], _ColumnRows] = {}
        self._errors = WriteErrors()
        try:
            self._dst = self._create(crs, transform, tags)
        except BaseException:
            self._errors.detach()
            raise

    def _create(self, crs: Any, transform: Any, tags: Optional[dict[str, str]]):
        import rasterio

        use_bundled_proj_data()  # the CRS written must not depend on the environment QGIS was started in

        profile = {
            "driver": "GTiff",
            "width": self.width,
            "height": self.height,
            "count": len(self.heads),
            "dtype": self.dtype,
            "nodata": UINT8_NODATA if self.dtype == "uint8" else float("nan"),
            "compress": "deflate",
            "zlevel": 1,  # a scratch copy: the COG step compresses it properly
            "predictor": 2 if self.dtype == "uint8" else 3,
            "interleave": "band" if len(self.heads) > 1 else "pixel",
            "BIGTIFF": "IF_SAFER",
            "transform": transform,
            "tiled": True,
            "blockxsize": OUTPUT_BLOCK,
            "blockysize": OUTPUT_BLOCK,
        }
        if crs is not None:
            profile["crs"] = crs
        try:
            dst = rasterio.open(self.tmp_path, "w", **profile)
        except Exception as exc:
            remove_quietly(self.tmp_path)
            raise OutputError(
                f"Cannot create {self.out_path} ({exc}). Choose a writable folder with free space."
            ) from None
        for index, head in enumerate(self.heads, start=1):
            dst.set_band_description(index, head)
        if self.dtype == "uint8":
            dst.scales = (UINT8_SCALE,) * len(self.heads)
            dst.offsets = (0.0,) * len(self.heads)
        dst.update_tags(**{HEADS_TAG: ",".join(self.heads)}, **(tags or {}))
        return dst

    @property
    def rows_written(self) -> int:
        """Rows written for every column (the least any window has written)."""
        if not self._windows:
            return 0
        covered = sum(w.stop - w.first for w in self._windows.values())
        least = min(w.rows_written for w in self._windows.values())
        return least if covered == self.width else 0

    def encode(self, prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(heads, h, w) probabilities in 0..1 and a (h, w) validity mask -> stored values."""
        if self.dtype == "uint8":
            stored = np.rint(np.clip(prob, 0.0, 1.0) * 254.0).astype(np.uint8)
            stored[:, ~valid] = UINT8_NODATA
        else:
            stored = np.clip(prob, 0.0, 1.0).astype(np.float32)
            stored[:, ~valid] = np.nan
        return stored

    def write_rows(self, prob: np.ndarray, valid: np.ndarray, columns: Optional[tuple[int, int]] = None) -> None:
        """Append the next rows (heads, h, w) of probabilities with their validity, for the full
        width or for the column window `columns` = (first, stop)."""
        first, stop = columns or (0, self.width)
        window = self._windows.get((first, stop))
        if window is None:
            if first % OUTPUT_BLOCK or (stop % OUTPUT_BLOCK and stop != self.width):
                raise OutputError(
                    f"Internal error: column window {first}-{stop} is not block-aligned; please report it."
                )
            window = self._windows[(first, stop)] = _ColumnRows(first, stop)
        if self._errors.messages:  # GDAL failed to write an earlier block (e.g. disk full): stop at once
            raise OutputError(self._write_failure())
        window.pending.append(self.encode(prob, valid))
        window.pending_rows += prob.shape[1]
        if window.pending_rows >= OUTPUT_BLOCK:
            self._flush(window, final=False)

    def _flush(self, window: _ColumnRows, final: bool) -> None:
        from rasterio.windows import Window

        if not window.pending:
            return
        rows = np.concatenate(window.pending, axis=1) if len(window.pending) > 1 else window.pending[0]
        n = rows.shape[1] if final else (rows.shape[1] // OUTPUT_BLOCK) * OUTPUT_BLOCK
        if n:
            target = Window(window.first, window.rows_written, window.stop - window.first, n)
            try:
                self._dst.write(rows[:, :n], window=target)
            except Exception as exc:  # rasterio raises for some write failures and only logs others
                self._errors.messages.append(str(exc))
            if self._errors.messages:
                raise OutputError(self._write_failure())
            window.rows_written += n
        rest = rows[:, n:]
        window.pending = [rest] if rest.shape[1] else []
        window.pending_rows = rest.shape[1]

    def _write_failure(self) -> str:
        first = self._errors.messages[0].strip().rstrip(".")
        return (
            f"Cannot write {self.out_path} ({first}); stopped at once. Check free disk space and that the folder is "
            "writable, then run again."
        )

    def commit(self, progress: Optional[Any] = None) -> Path:
        """Flush, write the COG (overviews included), and rename it into place."""
        for window in self._windows.values():
            self._flush(window, final=True)
        if self.rows_written != self.height:
            written = self.rows_written
            self.abort()
            raise OutputError(f"Internal error: wrote {written} of {self.height} rows; please report it.")
        try:
            self._dst.close()
            if self._errors.messages:
                raise OSError(self._errors.messages[0])
            write_cog(self.tmp_path, self.cog_path, self.dtype, progress)
            remove_quietly(self.tmp_path)
            os.replace(self.cog_path, self.out_path)
        except PermissionError:
            self.abort()
            raise OutputError(
                f"Cannot replace {self.out_path}: it is open in another program (on Windows, possibly as a layer "
                "in this QGIS project). Remove that layer or choose another output name."
            ) from None
        except Exception as exc:
            self.abort()
            raise OutputError(f"Cannot finish writing {self.out_path} ({exc}). Check free disk space.") from None
        self._errors.detach()
        return self.out_path

    def abort(self) -> None:
        """Close and delete the temporary files; the output path is left untouched."""
        with contextlib.suppress(Exception):
            self._dst.close()
        self._errors.detach()
        remove_quietly(self.tmp_path, self.cog_path)


def write_cog(source: Path, target: Path, dtype: str, progress: Optional[Any] = None) -> None:
    """Copy a GeoTIFF to a Cloud Optimized GeoTIFF: 256 px tiles, DEFLATE, averaged overviews.

    GDAL's COG driver puts the full-resolution image's IFD first and the overviews after it, so QGIS and
    web viewers read any part of it with few requests; band descriptions, scales and tags are copied.
    """
    import rasterio.shutil

    del progress  # GDAL's copy gives no progress through rasterio; it is a few percent of the job
    rasterio.shutil.copy(
        str(source),
        str(target),
        driver="COG",
        COMPRESS="DEFLATE",
        LEVEL="3",  # measured: 3x faster than the default 6 for 4 % more bytes
        PREDICTOR="YES",
        BLOCKSIZE=str(OUTPUT_BLOCK),
        OVERVIEWS="IGNORE_EXISTING",
        OVERVIEW_RESAMPLING="AVERAGE",
        BIGTIFF="IF_SAFER",
        NUM_THREADS="ALL_CPUS",
    )


def read_probability(path: Union[str, Path], window=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(probabilities float32 (heads, h, w) in 0..1, valid (h, w), head names) of a probability raster."""
    with opened(path) as ds:
        tag = ds.tags().get(HEADS_TAG)
        heads = tag.split(",") if tag else [d or f"band{i + 1}" for i, d in enumerate(ds.descriptions)]
        prob, valid = decode_probability(ds, window)
    return prob, valid, heads


def _band_scale(ds, band: int, notes: Optional[list[str]]) -> tuple[float, float]:
    """(scale, offset) of one probability band; integer bands written without one are read as 0..1."""
    scale, offset = float(ds.scales[band] or 1.0), float(ds.offsets[band] or 0.0)
    dtype = np.dtype(ds.dtypes[band])
    if scale == 1.0 and offset == 0.0 and dtype.kind in "ui":
        if dtype == np.uint8:  # our format (0..254, nodata 255) or a plain 0..255 band
            return (UINT8_SCALE if ds.nodatavals[band] == UINT8_NODATA else 1.0 / 255.0), 0.0
        if notes is not None:
            notes.append(f"{Path(ds.name).name} band {band + 1} is {dtype} without a scale; read as 0..1.")
        return 1.0 / float(np.iinfo(dtype).max), 0.0
    return scale, offset


def decode_probability(ds, window=None, notes: Optional[list[str]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities float32 (bands, h, w) in 0..1, 0 where invalid; valid (h, w)) of an open probability raster.

    The one decoder of the probability format: each band's own scale and offset, nodata in any band or the
    raster's mask, and NaN mark invalid pixels. notes collects notes on integer bands without a scale.
    """
    raw = ds.read(window=window)
    prob = np.empty(raw.shape, np.float32)
    for band in range(raw.shape[0]):
        scale, offset = _band_scale(ds, band, notes)
        np.multiply(raw[band], np.float32(scale), out=prob[band], casting="unsafe")
        if offset:
            prob[band] += np.float32(offset)
    nodata = ds.nodatavals[0]
    if nodata is not None and not np.isnan(nodata):
        valid = (raw != raw.dtype.type(nodata)).all(axis=0)
    else:
        valid = ds.read_masks(1, window=window) > 0
    valid &= np.isfinite(prob).all(axis=0)
    prob[:, ~valid] = 0.0
    return prob, valid
