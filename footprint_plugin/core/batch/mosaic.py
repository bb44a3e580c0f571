"""Tiles into mosaics, mosaics into blocks: the geometry of a big-area batch job.

- Tiles of one CRS, pixel size, band count and data type whose footprints touch or overlap are one
  mosaic (a GDAL VRT), so a building that crosses a tile edge is seen, and polygonized, whole.
  Tiles that touch nothing, or are in another CRS or resolution, form mosaics of their own.
- A mosaic is cut into square blocks. Each block is read with a margin laid out on the inference
  tile grid of the whole mosaic (tiles start at multiples of the stride, tile - overlap), so every
  pixel of a block's core is covered by exactly the tiles that cover it in a whole-mosaic run, and
  its blended probability is the same. The cores tile the mosaic without gaps or overlap.
- The cores' probabilities are put back together as one VRT, which the block-wise polygonizer
  reads like any probability raster (it joins the pieces of buildings cut by its own seams).
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union
from xml.sax.saxutils import escape

from ..common.errors import InputError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".png", ".jpg", ".jpeg")
# Footprints closer than this many pixels count as touching (float rounding of tile corners).
TOUCH_TOLERANCE_PX = 0.5


@dataclass
class TileInfo:
    """One input raster's grid, read from its header (no pixels)."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs_wkt: Optional[str]
    transform: tuple[float, float, float, float, float, float]  # a, b, c, d, e, f
    bounds: tuple[float, float, float, float]  # left, bottom, right, top
    is_vrt: bool = False
    sources: list[str] = field(default_factory=list)  # a VRT's files (for the `tile` field)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def stem(self) -> str:
        return Path(self.path).stem

    def grid_key(self) -> tuple:
        """Tiles that can share a mosaic have equal keys."""
        a, b, _c, d, e, _f = self.transform
        return (self.crs_wkt or "", round(a, 9), round(b, 9), round(d, 9), round(e, 9), self.count, self.dtype)


@dataclass
class Mosaic:
    """Adjacent tiles of one grid, read as one raster."""

    name: str
    tiles: list[TileInfo]
    vrt_path: str = ""
    width: int = 0
    height: int = 0
    transform: tuple[float, ...] = ()
    crs_wkt: Optional[str] = None

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


@dataclass
class Block:
    """One unit of work: a window of a mosaic to run the model on, and the core of it to keep.

    Offsets are mosaic pixels; the core lies inside the window.
    """

    mosaic: str
    index: int
    row: int
    col: int
    window: tuple[int, int, int, int]  # col_off, row_off, width, height
    core: tuple[int, int, int, int]  # col_off, row_off, width, height

    @property
    def block_id(self) -> str:
        return f"{self.mosaic}__r{self.row:04d}_c{self.col:04d}"

    @property
    def megapixels(self) -> float:
        return self.core[2] * self.core[3] / 1e6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- inputs


def expand_inputs(inputs: Sequence[Union[str, Path]], pattern: str = "*.tif") -> list[Path]:
    """Folders (their files matching `pattern`, not recursive), raster files and VRTs -> unique paths."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and fnmatch.fnmatch(p.name.lower(), pattern.lower())
            )
            if not found:
                raise InputError(f"No files matching {pattern!r} in {path}. Check the folder, or pass another pattern.")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise InputError(f"Input not found: {path}. Give existing raster files, VRTs or folders of tiles.")
    resolved = list(dict.fromkeys(p.resolve() for p in paths))
    if not resolved:
        raise InputError("No input rasters given. Pass raster files, a VRT or a folder of tiles.")
    return resolved


def describe_tile(path: Union[str, Path]) -> TileInfo:
    """The tile's grid from its header; unreadable files raise InputError (the caller skips them).

    A small read of the tile's last block is made too, so a truncated file (the usual corruption of a
    download) is caught here rather than in the middle of a block.
    """
    from rasterio.windows import Window

    from ..io import raster_io

    path = Path(path)
    with raster_io.opened(path) as ds:
        try:
            last = Window(max(ds.width - 1, 0), max(ds.height - 1, 0), 1, 1)
            ds.read(1, window=last)
        except Exception as exc:  # noqa: BLE001 - any read failure means the tile is unusable
            raise InputError(
                f"GDAL cannot read the pixels of {path.name} ({exc}); re-export or re-download it."
            ) from None
        t = ds.transform
        is_vrt = path.suffix.lower() == ".vrt"
        sources = [str(Path(f).resolve()) for f in ds.files[1:]] if is_vrt else []
        return TileInfo(
            path=str(path),
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtype=ds.dtypes[0],
            crs_wkt=ds.crs.to_wkt() if ds.crs else None,
            transform=(t.a, t.b, t.c, t.d, t.e, t.f),
            bounds=tuple(ds.bounds),
            is_vrt=is_vrt,
            sources=sources,
        )


def _touching(a: TileInfo, b: TileInfo) -> bool:
    tolerance = TOUCH_TOLERANCE_PX * max(abs(a.transform[0]), abs(a.transform[4]))
    return not (
        a.bounds[2] < b.bounds[0] - tolerance
        or b.bounds[2] < a.bounds[0] - tolerance
        or a.bounds[3] < b.bounds[1] - tolerance
        or b.bounds[3] < a.bounds[1] - tolerance
    )


def group_tiles(tiles: Sequence[TileInfo]) -> list[list[TileInfo]]:
    """Connected groups of touching tiles with the same grid; a VRT input is always its own group."""
    import shapely

    groups: list[list[TileInfo]] = []
    by_key: dict[tuple, list[TileInfo]] = {}
    for tile in tiles:
        if tile.is_vrt or tile.transform[1] or tile.transform[3]:  # VRTs and rotated grids stay alone
            groups.append([tile])
        else:
            by_key.setdefault(tile.grid_key(), []).append(tile)
    for members in by_key.values():
        parent = list(range(len(members)))

        def find(i: int, parent: list[int] = parent) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        boxes = [shapely.box(*t.bounds) for t in members]
        tree = shapely.STRtree(boxes)
        tolerance = TOUCH_TOLERANCE_PX * max(abs(members[0].transform[0]), abs(members[0].transform[4]))
        left, right = tree.query(shapely.buffer(boxes, tolerance, join_style="mitre"), predicate="intersects")
        for i, j in zip(left.tolist(), right.tolist()):
            if i != j and _touching(members[i], members[j]):
                parent[find(i)] = find(j)
        components: dict[int, list[TileInfo]] = {}
        for i, tile in enumerate(members):
            components.setdefault(find(i), []).append(tile)
        groups.extend(components.values())
    for group in groups:
        group.sort(key=lambda t: t.path)
    groups.sort(key=lambda g: g[0].path)
    return groups


def mosaic_name(group: Sequence[TileInfo], taken: set[str]) -> str:
    """A file-name-safe, unique name: the tile's stem for one tile, else the first stem and a count."""
    base = group[0].stem if len(group) == 1 else f"{group[0].stem}+{len(group) - 1}"
    safe = "".join(ch if ch.isalnum() or ch in "-_+." else "_" for ch in base)[:80] or "mosaic"
    name, n = safe, 2
    while name in taken:
        name, n = f"{safe}_{n}", n + 1
    taken.add(name)
    return name


def build_mosaic_vrt(group: Sequence[TileInfo], out_path: Union[str, Path]) -> Path:
    """A GDAL VRT over the group's tiles (the input itself when it is a single VRT).

    When the tiles do not fill their bounding box, an alpha band marks the gaps as nodata, so the model
    never runs on the VRT's zero fill.
    """
    from osgeo import gdal

    gdal.UseExceptions()
    out_path = Path(out_path)
    tiles = list(group)
    covered = sum(t.width * t.height for t in tiles)
    left = min(t.bounds[0] for t in tiles)
    bottom = min(t.bounds[1] for t in tiles)
    right = max(t.bounds[2] for t in tiles)
    top = max(t.bounds[3] for t in tiles)
    a, e = abs(tiles[0].transform[0]), abs(tiles[0].transform[4])
    box_pixels = round((right - left) / a) * round((top - bottom) / e)
    gaps = len(tiles) > 1 and covered < box_pixels
    options = gdal.BuildVRTOptions(addAlpha=gaps)
    tmp = out_path.with_name(out_path.name + ".tmp")
    dataset = gdal.BuildVRT(str(tmp), [t.path for t in tiles], options=options)
    if dataset is None:
        raise InputError(f"GDAL could not build a mosaic of {', '.join(t.name for t in tiles)}.")
    dataset = None
    tmp.replace(out_path)
    return out_path


# --------------------------------------------------------------------------- blocks


def stride_of(tile: int, overlap: int) -> int:
    return max(1, tile - overlap)


def core_starts(length: int, block: int, tile: int, overlap: int) -> list[int]:
    """Starts of block cores along one axis: multiples of the block size (itself a multiple of the
    inference stride); a last core shorter than one tile is merged into the one before it."""
    stride = stride_of(tile, overlap)
    block = max(stride, (block // stride) * stride)
    starts = list(range(0, length, block))
    if len(starts) > 1 and length - starts[-1] < tile:
        starts.pop()
    return starts


def block_window_axis(c0: int, c1: int, length: int, tile: int, overlap: int) -> tuple[int, int]:
    """[w0, w1) read for the core [c0, c1) along one axis.

    The tile covering c0 from the left starts one stride before it; ending the window `overlap` pixels
    after c1 makes the window's own last tile the mosaic's last tile over the core (no extra tile).
    """
    stride = stride_of(tile, overlap)
    w0 = max(0, c0 - stride) if c0 > 0 else 0
    w1 = length if c1 >= length else min(length, c1 + overlap)
    return w0, w1


def plan_blocks(mosaic: Mosaic, block_size: int, tile: int, overlap: int) -> list[Block]:
    """The mosaic's blocks, row by row."""
    rows = core_starts(mosaic.height, block_size, tile, overlap)
    cols = core_starts(mosaic.width, block_size, tile, overlap)
    blocks = []
    for r, r0 in enumerate(rows):
        r1 = rows[r + 1] if r + 1 < len(rows) else mosaic.height
        wy0, wy1 = block_window_axis(r0, r1, mosaic.height, tile, overlap)
        for c, c0 in enumerate(cols):
            c1 = cols[c + 1] if c + 1 < len(cols) else mosaic.width
            wx0, wx1 = block_window_axis(c0, c1, mosaic.width, tile, overlap)
            blocks.append(
                Block(
                    mosaic=mosaic.name,
                    index=len(blocks),
                    row=r,
                    col=c,
                    window=(wx0, wy0, wx1 - wx0, wy1 - wy0),
                    core=(c0, r0, c1 - c0, r1 - r0),
                )
            )
    return blocks


def write_window_vrt(
    mosaic_vrt: Union[str, Path], window: tuple[int, int, int, int], out_path: Union[str, Path]
) -> Path:
    """A VRT of one window of the mosaic (pixel-exact: no resampling)."""
    from osgeo import gdal

    gdal.UseExceptions()
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    dataset = gdal.Translate(
        str(tmp), str(mosaic_vrt), options=gdal.TranslateOptions(format="VRT", srcWin=list(window))
    )
    if dataset is None:
        raise InputError(f"GDAL could not cut window {window} out of {mosaic_vrt}.")
    dataset = None
    tmp.replace(out_path)
    return out_path


def write_cores_vrt(
    out_path: Union[str, Path],
    mosaic: Mosaic,
    blocks: Iterable[Block],
    block_paths: dict[str, Path],
) -> Path:
    """One probability raster for the mosaic: the core of every finished block's probability GeoTIFF.

    Blocks without a file (failed) read as nodata. Band names, scale, nodata and the heads tag are
    copied from the first block file, so the result reads like a probability raster of the mosaic.
    """
    import rasterio

    out_path = Path(out_path)
    present = [(b, block_paths[b.block_id]) for b in blocks if b.block_id in block_paths]
    if not present:
        raise InputError(f"No block of mosaic {mosaic.name} was finished; nothing to polygonize.")
    with rasterio.open(present[0][1]) as first:
        count, dtype = first.count, first.dtypes[0]
        descriptions, scales, offsets = first.descriptions, first.scales, first.offsets
        nodata = first.nodata
        tags = first.tags()
    gdal_type = {"uint8": "Byte", "float32": "Float32"}[dtype]
    nodata_text = "nan" if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)) else repr(float(nodata))
    a, b_, c, d, e, f = mosaic.transform
    lines = [f'<VRTDataset rasterXSize="{mosaic.width}" rasterYSize="{mosaic.height}">']
    if mosaic.crs_wkt:
        lines.append(f"  <SRS>{escape(mosaic.crs_wkt)}</SRS>")
    lines.append(f"  <GeoTransform>{c!r}, {a!r}, {b_!r}, {f!r}, {d!r}, {e!r}</GeoTransform>")
    lines.append("  <Metadata>")
    for key, value in sorted(tags.items()):
        lines.append(f'    <MDI key="{escape(key)}">{escape(str(value))}</MDI>')
    lines.append("  </Metadata>")
    for band in range(1, count + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{band}">')
        if descriptions[band - 1]:
            lines.append(f"    <Description>{escape(descriptions[band - 1])}</Description>")
        lines.append(f"    <NoDataValue>{nodata_text}</NoDataValue>")
        lines.append(f"    <Offset>{float(offsets[band - 1])!r}</Offset>")
        lines.append(f"    <Scale>{float(scales[band - 1])!r}</Scale>")
        for block, path in present:
            wx, wy, _ww, _wh = block.window
            cx, cy, cw, ch = block.core
            lines += [
                "    <SimpleSource>",
                f'      <SourceFilename relativeToVRT="0">{escape(str(Path(path).resolve()))}</SourceFilename>',
                f"      <SourceBand>{band}</SourceBand>",
                f'      <SrcRect xOff="{cx - wx}" yOff="{cy - wy}" xSize="{cw}" ySize="{ch}" />',
                f'      <DstRect xOff="{cx}" yOff="{cy}" xSize="{cw}" ySize="{ch}" />',
                "    </SimpleSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out_path)
    return out_path


def fingerprint(data: Any) -> str:
    """A short stable hash of JSON-able job settings (the resume check)."""
    import json

    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
