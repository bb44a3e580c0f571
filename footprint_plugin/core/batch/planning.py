"""Planning a batch job before any block runs: its outputs checked, its tiles read and grouped into
mosaics and blocks, its size estimated (disk and time, with the engine's estimate), its scaling statistics."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..common.errors import FootprintError, InputError, OutputError
from ..zoo.modelcard import ModelCard
from . import mosaic as mosaic_mod

# A job estimated to run longer than this starts only when the user confirmed it (CLI --yes).
CONFIRM_SECONDS = 3600.0


@dataclass
class Plan:
    tiles: list[mosaic_mod.TileInfo]
    skipped: list[str]
    mosaics: list[mosaic_mod.Mosaic]
    blocks: dict[str, list[mosaic_mod.Block]]
    stats: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def all_blocks(self) -> list[mosaic_mod.Block]:
        return [b for m in self.mosaics for b in self.blocks[m.name]]

    def mosaic(self, name: str) -> mosaic_mod.Mosaic:
        return next(m for m in self.mosaics if m.name == name)


def check_outputs(paths: Sequence[Path], out_vector: Optional[Path], probability_dir: Optional[Path]) -> None:
    """No output may replace an input (core/io/paths.py), and the folders must be usable, before any work."""
    from ..io.paths import check_folder_writable
    from ..io.paths import check_outputs as check_not_inputs
    from ..io.vector_io import DRIVERS_BY_SUFFIX

    inputs = {f"input {p.name}": p for p in paths}
    if out_vector is not None:
        check_not_inputs(inputs, {"The output": out_vector})
        if out_vector.suffix.lower() not in DRIVERS_BY_SUFFIX:
            known = ", ".join(sorted(DRIVERS_BY_SUFFIX))
            raise OutputError(f"The output: {out_vector.name} is not a vector file name; use one of {known}.")
        check_folder_writable(out_vector, "The output")
    if probability_dir is not None:
        if probability_dir.exists() and not probability_dir.is_dir():
            raise OutputError(f"{probability_dir} is a file; give a folder for the probability rasters.")
        if probability_dir.resolve() in {p.resolve().parent for p in paths}:
            raise OutputError(
                f"The probability folder {probability_dir} holds input tiles; choose another folder so no "
                "probability raster can replace an input."
            )


def _describe_tiles(paths: Sequence[Path]) -> tuple[list[mosaic_mod.TileInfo], list[str]]:
    tiles, skipped = [], []
    for path in paths:
        try:
            tiles.append(mosaic_mod.describe_tile(path))
        except FootprintError as exc:
            skipped.append(f"{path.name}: {exc}")
    if not tiles:
        raise InputError("None of the tiles could be read:\n" + "\n".join(skipped) + "\nCheck that they are rasters.")
    return tiles, skipped


def mosaic_files(name: str) -> list[str]:
    """The job-folder files (relative) a mosaic's VRTs take."""
    return [f"mosaics/{name}.vrt", f"mosaics/{name}_probability.vrt"]


def plan_job(
    paths: Sequence[Path],
    card: ModelCard,
    inference_options: Any,
    block_size: int,
    job_dir: Path,
    record_files: Callable[[list[str]], None],
) -> Plan:
    """Read the tiles' headers, group them into mosaic VRTs in the job folder and cut those into blocks.

    `record_files` hears every job-folder file before it is written (the job's cleanup list).
    """
    from ..io import raster_io

    tiles, skipped = _describe_tiles(paths)
    tile_size = int(inference_options.tile_size or card.tile_size)
    overlap = int(card.overlap if inference_options.overlap is None else inference_options.overlap)
    taken: set[str] = set()
    named = [(mosaic_mod.mosaic_name(group, taken), group) for group in mosaic_mod.group_tiles(tiles)]
    record_files([f for name, _group in named for f in mosaic_files(name)])
    mosaics, blocks = [], {}
    for name, group in named:
        vrt = job_dir / "mosaics" / f"{name}.vrt"
        try:
            mosaic_mod.build_mosaic_vrt(group, vrt)
            with raster_io.gdal_env(), raster_io.opened(vrt) as ds:
                t = ds.transform
                mosaic = mosaic_mod.Mosaic(
                    name,
                    list(group),
                    str(vrt),
                    ds.width,
                    ds.height,
                    (t.a, t.b, t.c, t.d, t.e, t.f),
                    ds.crs.to_wkt() if ds.crs else None,
                )
        except FootprintError as exc:
            skipped += [f"{t.name}: {exc}" for t in group]
            continue
        mosaics.append(mosaic)
        blocks[name] = mosaic_mod.plan_blocks(mosaic, block_size, tile_size, overlap)
    if not mosaics:
        raise InputError("None of the tiles can be processed:\n" + "\n".join(skipped))
    used = {t.path for m in mosaics for t in m.tiles}
    return Plan([t for t in tiles if t.path in used], skipped, mosaics, blocks)


def add_scaling_stats(plan: Plan, card: ModelCard, earlier: dict[str, Any]) -> None:
    """Each mosaic's input-scaling statistics, computed once (an earlier run's are reused on resume)."""
    from ..engine.scaling import compute_scaling_stats
    from ..io import raster_io

    for mosaic in list(plan.mosaics):
        if mosaic.name in earlier:
            plan.stats[mosaic.name] = earlier[mosaic.name]
            continue
        try:
            with raster_io.gdal_env(), raster_io.opened(mosaic.vrt_path) as ds:
                plan.stats[mosaic.name] = compute_scaling_stats(ds, card).to_dict()
        except FootprintError as exc:
            plan.skipped += [f"{t.name}: {exc}" for t in mosaic.tiles]
            plan.mosaics.remove(mosaic)
            del plan.blocks[mosaic.name]
    if not plan.mosaics:
        raise InputError("None of the tiles can be processed:\n" + "\n".join(plan.skipped))
    used = {t.path for m in plan.mosaics for t in m.tiles}
    plan.tiles = [t for t in plan.tiles if t.path in used]


def _same_disk(a: Path, b: Path) -> bool:
    def device(path: Path) -> Optional[int]:
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            return os.stat(path).st_dev
        except OSError:
            return None

    first, second = device(a), device(b)
    return first is not None and first == second


def _total_estimate(plan: Plan, card: ModelCard, inference_options: Any, job_dir: Path) -> Any:
    """The engine's estimate (core/engine/estimate.py) summed over the mosaics; None when none can be estimated."""
    from ..engine.estimate import estimate_job

    estimates = []
    for mosaic in plan.mosaics:
        try:
            estimates.append(estimate_job(mosaic.vrt_path, card, inference_options, job_dir / "blocks" / "b.tif"))
        except FootprintError:
            continue  # such a mosaic's blocks fail, each with the reason
    if not estimates:
        return None
    return dataclasses.replace(
        estimates[0],
        megapixels=sum(e.megapixels for e in estimates),
        model_megapixels=sum(e.model_megapixels for e in estimates),
        tiles=sum(e.tiles for e in estimates),
        measured=all(e.measured for e in estimates),
        seconds=sum(e.seconds for e in estimates),
        disk_bytes=sum(e.disk_bytes for e in estimates),
    )


def check_job_size(
    plan: Plan,
    card: ModelCard,
    inference_options: Any,
    folders: tuple[Path, Optional[Path]],
    remaining: float,
    confirmed: bool,
) -> list[str]:
    """Refuse, before the work, a job that cannot fit the disk (its blocks in the job folder, its probability
    rasters) or that is estimated at hours without the user's confirmation. Returns warnings.

    `remaining`: the share of the job's megapixels still to run (a resume runs only the rest)."""
    from ..engine.estimate import check_disk
    from ..io.paths import free_bytes

    job_dir, probability_dir = folders
    total = _total_estimate(plan, card, inference_options, job_dir)
    if total is None:
        return []
    total = dataclasses.replace(total, seconds=total.seconds * remaining)
    blocks_bytes = int(total.disk_bytes * remaining)
    places = [(job_dir / "blocks", blocks_bytes)]
    if probability_dir is not None:
        if _same_disk(job_dir, probability_dir):
            places = [(job_dir / "blocks", blocks_bytes + total.disk_bytes)]
        else:
            places.append((probability_dir, total.disk_bytes))
    warnings = []
    for folder, need in places:
        estimate = dataclasses.replace(total, disk_bytes=need, free_bytes=free_bytes(folder))
        try:
            warning = check_disk(estimate, folder / "probability.tif")
        except OutputError as exc:
            raise OutputError(f"This batch job's blocks and probability rasters do not fit the disk. {exc}") from None
        if warning:
            warnings.append(warning)
    if total.seconds > CONFIRM_SECONDS and not confirmed:
        raise InputError(
            f"{total.describe()} A batch job estimated at hours starts only when confirmed: add --yes (in QGIS: "
            "tick 'Start a job estimated at hours'), or split the tiles into smaller jobs."
        )
    if total.is_large:
        warnings.append(f"This is a large job. {total.describe()}")
    return warnings


def tiles_in_window(mosaic: mosaic_mod.Mosaic, window: tuple[int, int, int, int]) -> list[str]:
    """Names of the mosaic's tiles a block window reads."""
    a, _b, c, _d, e, f = mosaic.transform
    col, row, width, height = window
    left, right = c + a * col, c + a * (col + width)
    top, bottom = f + e * row, f + e * (row + height)
    x0, x1, y0, y1 = min(left, right), max(left, right), min(top, bottom), max(top, bottom)
    return [
        t.name for t in mosaic.tiles if t.bounds[0] < x1 and t.bounds[2] > x0 and t.bounds[1] < y1 and t.bounds[3] > y0
    ]


def failure_report(plan: Plan, results: list[dict], polygons: list[dict]) -> Optional[tuple[str, list[str]]]:
    """(title, one line per failed block with its tiles, and per failed mosaic layer); None when all went well."""
    by_id = {b.block_id: b for b in plan.all_blocks()}
    failed = []
    for result in results:
        if result.get("status") != "done":
            block = by_id[result["block_id"]]
            involved = tiles_in_window(plan.mosaic(block.mosaic), block.window)
            failed.append(f"{result['block_id']} (tiles {', '.join(involved) or '?'}): {result.get('error')}")
    n_blocks = len(failed)
    failed += [f"mosaic {p['mosaic']} (polygons): {p.get('error')}" for p in polygons if p.get("status") != "done"]
    if not failed:
        return None
    title = f"{n_blocks} of {len(by_id)} blocks failed" if n_blocks else "Some mosaic layers could not be made"
    if n_blocks and len(failed) > n_blocks:
        title += f" and {len(failed) - n_blocks} mosaic layer(s) could not be made"
    return title, failed
