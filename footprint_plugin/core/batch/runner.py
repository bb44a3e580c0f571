"""Big-area detection: many tiles as seamless mosaics, cut into blocks, run on Dask workers or serially,
resumable from a job folder.

A job:
1. Reads every input's header (a corrupt tile is skipped and reported), groups touching tiles of one
   grid into mosaics (core/batch/mosaic.py) and computes each mosaic's input-scaling statistics once, so
   every block is scaled like the whole mosaic (per-block statistics would make seams).
2. Cuts each mosaic into blocks with a margin on the mosaic's inference tile grid, and runs
   `predict_raster` on every block not already done. A block is done when its probability GeoTIFF
   exists in the job folder: the engine writes it to a temporary name and renames it, so a kill or a
   reboot never leaves a half block that looks finished. `--resume` skips those blocks.
3. Reads the blocks' cores back as one probability VRT per mosaic and polygonizes it with the
   block-wise polygonizer, which joins the buildings cut by its seams; a building gets the `tile`
   of the input tile holding its representative point.
4. Merges all mosaics into one layer (the first mosaic's CRS) and writes it atomically.

Blocks run on a Dask cluster (a LocalCluster by default, or `scheduler=` an existing one) or, with
workers=0 or without dask, in this process. Each process loads the model once (`cached_model`).
A worker that dies mid-block has its block re-run elsewhere by the scheduler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled
from ..common.errors import CanceledError, FootprintError, InputError, OutputError
from ..io.atomic import remove_quietly, remove_stale_partials, temporary_sibling, write_text_atomically
from ..zoo.modelcard import ModelCard, find_model, load_card
from . import mosaic as mosaic_mod

JOB_VERSION = 1
JOB_FILE = "job.json"
DEFAULT_BLOCK_SIZE = 4096
MIN_BLOCK_SIZE = 128
# Share of the progress bar for inference over blocks; polygons and the merge take the rest.
BLOCK_SHARE = 0.9

_MODEL_CACHE: dict[tuple[str, str], Any] = {}
_MODEL_LOCK = threading.Lock()
_BLOCK_LOCK = threading.Lock()


@dataclass
class BatchOptions:
    """How a batch runs. workers=None: one per core or GPU; 0: serially in this process."""

    workers: Optional[int] = None
    scheduler: Optional[str] = None  # tcp://host:8786: an existing Dask cluster
    block_size: int = DEFAULT_BLOCK_SIZE  # block core side in pixels (rounded to the inference stride)
    job_dir: Optional[Union[str, Path]] = None  # default: <out>.job beside the output, or a temporary folder
    resume: bool = False
    keep_job: bool = False  # keep the job folder after success (otherwise removed)
    probability_dir: Optional[Union[str, Path]] = None  # per-mosaic probability COGs
    pattern: str = "*.tif"  # files taken from input folders
    client: Any = None  # an already connected dask Client (notebooks, tests); not closed here


@dataclass
class BatchProgress:
    """What a progress bar shows: blocks, throughput, time left."""

    blocks_done: int
    blocks_total: int
    blocks_resumed: int
    megapixels_done: float
    megapixels_total: float
    seconds: float
    stage: str = "blocks"

    @property
    def mp_per_s(self) -> float:
        return self.megapixels_done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> Optional[float]:
        rate = self.mp_per_s
        return (self.megapixels_total - self.megapixels_done) / rate if rate > 0 else None


@dataclass
class BatchResult:
    buildings_path: Optional[Path]
    probability_paths: list[Path]
    n_buildings: int
    geometries: list[Any]
    attributes: list[dict[str, Any]]
    crs_wkt: Optional[str]
    n_tiles: int
    skipped: list[str]
    n_mosaics: int
    blocks_total: int
    blocks_resumed: int
    blocks_run: int
    blocks_failed: list[str]
    engine: str
    workers: int
    seconds: float
    block_phase_seconds: float
    block_compute_seconds: float
    megapixels: float
    model: str
    job_dir: Optional[Path]
    hint: str = ""
    warnings: list[str] = field(default_factory=list)
    peak_block_rss_mb: float = 0.0  # largest peak memory of a process that ran blocks
    startup_seconds: float = 0.0  # starting or joining the cluster, and its workers loading the model

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        lines = [
            f"Buildings found: {self.n_buildings} in {self.n_tiles} tiles ({self.n_mosaics} mosaics)",
            f"Blocks: {self.blocks_total} ({self.blocks_run} run, {self.blocks_resumed} resumed, "
            f"{len(self.blocks_failed)} failed)",
            f"Time: {self.seconds:.1f} s ({self.mp_per_s:.2f} MP/s over {self.megapixels:.2f} MP) on {self.engine}",
            f"Model: {self.model}",
        ]
        lines += [f"Skipped tile: {s}" for s in self.skipped]
        lines += [f"Failed block: {f}" for f in self.blocks_failed]
        if self.blocks_failed and self.job_dir is not None:
            lines.append(f"Fix the tiles named above and run again with --resume (job folder {self.job_dir}).")
        lines += [f"Warning: {w}" for w in self.warnings]
        if self.hint:
            lines.append(f"Hint: {self.hint}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "buildings_path": str(self.buildings_path) if self.buildings_path else None,
            "probability_paths": [str(p) for p in self.probability_paths],
            "n_buildings": self.n_buildings,
            "n_tiles": self.n_tiles,
            "skipped": self.skipped,
            "n_mosaics": self.n_mosaics,
            "blocks_total": self.blocks_total,
            "blocks_resumed": self.blocks_resumed,
            "blocks_run": self.blocks_run,
            "blocks_failed": self.blocks_failed,
            "engine": self.engine,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "block_phase_seconds": round(self.block_phase_seconds, 3),
            "block_compute_seconds": round(self.block_compute_seconds, 3),
            "megapixels": round(self.megapixels, 3),
            "mp_per_s": round(self.mp_per_s, 3),
            "model": self.model,
            "job_dir": str(self.job_dir) if self.job_dir else None,
            "hint": self.hint,
            "warnings": self.warnings,
            "peak_block_rss_mb": round(self.peak_block_rss_mb, 1),
            "startup_seconds": round(self.startup_seconds, 3),
        }


# --------------------------------------------------------------------------- worker side


def cached_model(card_path: Union[str, Path]) -> tuple[ModelCard, Any]:
    """(card, network) for a card file, loaded and verified once per process."""
    card = load_card(card_path)
    key = (str(Path(card_path).resolve()), card.sha256 or "")
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            from ..zoo.weights import load_model

            _MODEL_CACHE[key] = load_model(card, "cpu")
        return card, _MODEL_CACHE[key]


_PREPARED: dict[tuple[int, str], tuple[Any, Any]] = {}


def _prepared_once(model: Any, device: str) -> Any:
    """prepare_model memoised per (network, device): a block then skips the copy and fusing (~0.5 s on a
    CPU, as long as a whole block on a GPU). Reused only while the copy still sits on that device (the
    engine moves a runner's network to the CPU after a GPU out-of-memory)."""
    from ..engine.device import select_device
    from ..engine.inference import prepare_model

    choice = select_device(device)
    key = (id(model), str(choice.device))
    cached = _PREPARED.get(key)
    # The network is kept with its copy: an id() is only unique while its object is alive.
    if cached is not None and cached[0] is model:
        parameter = next(cached[1].parameters(), None)
        if parameter is None or str(parameter.device).startswith(choice.kind):
            return cached[1]
    prepared = prepare_model(model, choice)
    _PREPARED[key] = (model, prepared)
    return prepared


def _peak_rss_mb() -> float:
    """This process's peak resident memory (0 where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_block(spec: dict[str, Any], is_canceled: Optional[CancelCallback] = None) -> dict[str, Any]:
    """Run the model over one block and write its probability GeoTIFF (the block's "done" marker).

    Never raises for a bad block: a read error (corrupt tile) or a user error comes back as status
    "failed" with the message, so one bad tile never stops the job. Cancel still raises.
    """
    from ..engine.inference import InferenceOptions, predict_raster
    from ..engine.scaling import ScalingStats
    from . import distributed as dist

    started = time.perf_counter()
    block = mosaic_mod.Block(**spec["block"])
    out_path = Path(spec["out_path"])
    base = {"block_id": block.block_id, "mosaic": block.mosaic, "megapixels": block.megapixels, "pid": os.getpid()}
    if out_path.exists():  # a re-run of a block whose result was lost with its worker
        return {**base, "status": "done", "seconds": 0.0, "warnings": []}
    window_vrt = out_path.with_name(f".{out_path.stem}.{os.getpid()}.window.vrt")
    try:
        card, model = cached_model(spec["card_path"])
        options = InferenceOptions(**spec["inference"])
        if options.device in ("auto", "cuda") and dist.PINNED_DEVICE:
            options.device = dist.PINNED_DEVICE
        mosaic_mod.write_window_vrt(spec["mosaic_vrt"], block.window, window_vrt)
        # The mosaic's statistics, not the block's: per-block scaling would make seams between blocks.
        stats = ScalingStats(**spec["stats"])
        # One block at a time per process: blocks share the prepared network, which an out-of-memory
        # fall-back moves to the CPU in place, and predict_raster sets torch's process-wide thread count.
        with _BLOCK_LOCK:
            result = predict_raster(
                window_vrt,
                card,
                out_path,
                options,
                is_canceled=is_canceled,
                scaling_stats=stats,
                prepared_model=_prepared_once(model, options.device),
            )
        return {
            **base,
            "status": "done",
            "seconds": time.perf_counter() - started,
            "warnings": list(result.warnings),
            "device": result.device,
            "precision": result.precision,
            "peak_rss_mb": _peak_rss_mb(),
        }
    except CanceledError:
        raise
    except FootprintError as exc:
        return {**base, "status": "failed", "error": str(exc), "seconds": time.perf_counter() - started}
    except Exception as exc:  # noqa: BLE001 - GDAL read errors of corrupt tiles surface as many types
        return {
            **base,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "seconds": time.perf_counter() - started,
        }
    finally:
        remove_quietly(window_vrt, window_vrt.with_name(window_vrt.name + ".tmp"))


def polygonize_mosaic(spec: dict[str, Any]) -> dict[str, Any]:
    """Polygonize one mosaic from its finished blocks; write its layer (and COG) in the job folder."""
    import shapely

    from ..vectors.polygons import PolygonOptions, polygonize_raster, write_buildings

    started = time.perf_counter()
    mosaic = mosaic_mod.Mosaic(
        **{**spec["mosaic"], "tiles": [mosaic_mod.TileInfo(**t) for t in spec["mosaic"]["tiles"]]}
    )
    blocks = [mosaic_mod.Block(**b) for b in spec["blocks"]]
    block_paths = {bid: Path(p) for bid, p in spec["block_paths"].items()}
    cores_vrt = Path(spec["cores_vrt"])
    mosaic_mod.write_cores_vrt(cores_vrt, mosaic, blocks, block_paths)
    result = polygonize_raster(cores_vrt, PolygonOptions(**spec["polygon"]), source=mosaic.name, model=spec["model"])
    # The `tile` of a building: the input tile holding its representative point (a VRT input: its files).
    names, boxes = [], []
    for tile in mosaic.tiles:
        sources = tile.sources if tile.is_vrt else []
        described = []
        for source in sources:
            with contextlib.suppress(Exception):
                described.append(mosaic_mod.describe_tile(source))
        for item in described or [tile]:
            names.append(item.name)
            boxes.append(shapely.box(*item.bounds))
    if result.geometries:
        tree = shapely.STRtree(boxes)
        points = shapely.point_on_surface(result.geometries)
        hit_geom, hit_box = tree.query(points, predicate="intersects")
        owner: dict[int, int] = {}
        for g, b in zip(hit_geom.tolist(), hit_box.tolist()):
            owner.setdefault(g, b)
        for k, attrs in enumerate(result.attributes):
            name = names[owner.get(k, 0)]
            attrs["source"] = name
            attrs["tile"] = Path(name).stem
    polygons_path = Path(spec["polygons_path"])
    write_buildings(result, polygons_path)
    probability_path = None
    if spec.get("probability_path"):
        probability_path = Path(spec["probability_path"])
        write_cog(cores_vrt, probability_path)
    return {
        "mosaic": mosaic.name,
        "n_buildings": len(result.geometries),
        "warnings": result.warnings,
        "seconds": time.perf_counter() - started,
        "probability_path": str(probability_path) if probability_path else None,
    }


def write_cog(source: Union[str, Path], out_path: Union[str, Path]) -> Path:
    """A Cloud-Optimized GeoTIFF copy of a probability raster, written atomically."""
    import rasterio
    import rasterio.shutil

    from ..io import raster_io

    out_path = Path(out_path)
    tmp = temporary_sibling(out_path)
    try:
        with raster_io.gdal_env(), rasterio.open(source) as src:
            rasterio.shutil.copy(
                src,
                tmp,
                driver="COG",
                COMPRESS="DEFLATE",
                PREDICTOR="2",
                BIGTIFF="IF_SAFER",
                OVERVIEW_RESAMPLING="AVERAGE",
            )
        os.replace(tmp, out_path)
    except Exception as exc:  # noqa: BLE001 - GDAL write errors (full disk, permissions)
        raise OutputError(f"Cannot write the probability raster {out_path} ({exc}). Check free disk space.") from None
    finally:
        remove_quietly(tmp)
    return out_path


# --------------------------------------------------------------------------- planning


@dataclass
class _Plan:
    tiles: list[mosaic_mod.TileInfo]
    skipped: list[str]
    mosaics: list[mosaic_mod.Mosaic]
    stats: dict[str, dict[str, Any]]
    blocks: dict[str, list[mosaic_mod.Block]]


def _job_folder(out_vector: Optional[Path], options: BatchOptions) -> tuple[Path, bool]:
    """(job folder, is temporary)."""
    if options.job_dir:
        return Path(options.job_dir), False
    if out_vector is not None:
        return out_vector.with_name(out_vector.name + ".job"), False
    return Path(tempfile.mkdtemp(prefix="footprint_batch_")), True


def _prepare_job_folder(job_dir: Path, resume: bool, settings_fp: str) -> Optional[dict[str, Any]]:
    """Create or check the job folder; returns the earlier job's record when resuming it."""
    record_path = job_dir / JOB_FILE
    if job_dir.exists() and not job_dir.is_dir():
        raise OutputError(f"The job folder {job_dir} is a file. Choose another job folder.")
    if job_dir.is_dir() and not record_path.exists() and any(job_dir.iterdir()):
        raise OutputError(
            f"The job folder {job_dir} is not empty and holds no {JOB_FILE}: it is not a batch job folder. "
            "Choose an empty or new folder."
        )
    record = None
    if record_path.exists():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
    if resume and record is not None:
        if record.get("version") != JOB_VERSION or record.get("blocks_fingerprint") != settings_fp:
            raise InputError(
                f"The job in {job_dir} was started with other inputs, model or detection settings, so its blocks "
                "cannot be reused. Run with the same settings to resume, or without --resume to start over."
            )
        return record
    if record_path.exists():  # a finished, failed or other job: start over in our own folder
        for name in ("blocks", "mosaics", "polygons"):
            shutil.rmtree(job_dir / name, ignore_errors=True)
        record_path.unlink()
    for name in ("blocks", "mosaics", "polygons"):
        (job_dir / name).mkdir(parents=True, exist_ok=True)
    return None


def _plan(
    paths: Sequence[Path],
    card: ModelCard,
    inference_options: Any,
    block_size: int,
    job_dir: Path,
    earlier: Optional[dict[str, Any]],
) -> _Plan:
    from ..engine.scaling import compute_scaling_stats
    from ..io import raster_io

    tiles, skipped = [], []
    for path in paths:
        try:
            tiles.append(mosaic_mod.describe_tile(path))
        except FootprintError as exc:
            skipped.append(f"{path.name}: {exc}")
    if not tiles:
        raise InputError("None of the tiles could be read:\n" + "\n".join(skipped) + "\nCheck that they are rasters.")
    tile_size = int(inference_options.tile_size or card.tile_size)
    overlap = int(card.overlap if inference_options.overlap is None else inference_options.overlap)
    taken: set[str] = set()
    mosaics, stats, blocks = [], {}, {}
    earlier_stats = (earlier or {}).get("stats", {})
    for group in mosaic_mod.group_tiles(tiles):
        name = mosaic_mod.mosaic_name(group, taken)
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
                if name in earlier_stats:
                    stats[name] = earlier_stats[name]
                else:
                    stats[name] = compute_scaling_stats(ds, card).to_dict()
        except FootprintError as exc:
            skipped += [f"{t.name}: {exc}" for t in group]
            continue
        mosaics.append(mosaic)
        blocks[name] = mosaic_mod.plan_blocks(mosaic, block_size, tile_size, overlap)
    if not mosaics:
        raise InputError("None of the tiles can be processed:\n" + "\n".join(skipped))
    used = {t.path for m in mosaics for t in m.tiles}
    return _Plan([t for t in tiles if t.path in used], skipped, mosaics, stats, blocks)


def _check_outputs(paths: Sequence[Path], out_vector: Optional[Path], probability_dir: Optional[Path]) -> None:
    """No output may replace an input (core/io/paths.py), and the folders must be usable, before any work."""
    from ..io.paths import check_folder_writable, check_outputs
    from ..io.vector_io import DRIVERS_BY_SUFFIX

    inputs = {f"input {p.name}": p for p in paths}
    if out_vector is not None:
        check_outputs(inputs, {"The output": out_vector})
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


# --------------------------------------------------------------------------- engines


class _Tracker:
    """Counts blocks and megapixels and reports them."""

    def __init__(
        self,
        total_blocks: int,
        total_mp: float,
        resumed: int,
        resumed_mp: float,
        progress: Optional[ProgressCallback],
        on_status: Optional[Callable[[BatchProgress], None]],
    ) -> None:
        self.total_blocks, self.total_mp = total_blocks, total_mp
        self.resumed, self.resumed_mp = resumed, resumed_mp
        self.done, self.done_mp = 0, 0.0
        self.started = time.monotonic()
        self.progress, self.on_status = progress, on_status
        self.compute_seconds = 0.0
        self.last_block_at = self.started

    def block_finished(self, result: dict[str, Any]) -> None:
        self.done += 1
        self.last_block_at = time.monotonic()
        self.done_mp += float(result.get("megapixels", 0.0))
        self.compute_seconds += float(result.get("seconds", 0.0))
        self.report()

    def report(self, stage: str = "blocks") -> None:
        fraction = (self.resumed_mp + self.done_mp) / self.total_mp if self.total_mp else 1.0
        if self.progress is not None:
            self.progress(BLOCK_SHARE * min(1.0, fraction))
        if self.on_status is not None:
            self.on_status(
                BatchProgress(
                    self.resumed + self.done,
                    self.total_blocks,
                    self.resumed,
                    self.done_mp,
                    self.total_mp - self.resumed_mp,
                    time.monotonic() - self.started,
                    stage,
                )
            )


def _run_serial(specs, polygon_specs, tracker: _Tracker, is_canceled) -> tuple[list[dict], list[dict]]:
    results = []
    for spec in specs:
        check_canceled(is_canceled)
        result = run_block(spec, is_canceled)
        results.append(result)
        tracker.block_finished(result)
    polygon_results = []
    for make_spec in polygon_specs(results):
        check_canceled(is_canceled)
        polygon_results.append(polygonize_mosaic(make_spec))
    return results, polygon_results


def _run_dask(client, specs, polygon_specs, tracker: _Tracker, is_canceled, job_key: str):
    """Submit every block; as they finish, hand each completed mosaic's polygons to a worker too."""
    from distributed import wait

    futures = {
        client.submit(run_block, spec, key=f"footprint-block-{job_key}-{spec['block_id']}", pure=False, retries=1): spec
        for spec in specs
    }
    pending = set(futures)
    results: list[dict] = []
    polygon_futures = []
    try:
        while pending:
            check_canceled(is_canceled)
            try:
                done, pending = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
                pending = set(pending)
            except TimeoutError:
                continue
            for future in done:
                spec = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - KilledWorker after repeated deaths, lost data, ...
                    result = {
                        "block_id": spec["block_id"],
                        "mosaic": spec["block"]["mosaic"],
                        "status": "failed",
                        "error": f"{type(exc).__name__}: {exc}",
                        "megapixels": 0.0,
                        "seconds": 0.0,
                    }
                results.append(result)
                tracker.block_finished(result)
            for polygon_spec in polygon_specs(results):
                polygon_futures.append(
                    client.submit(
                        polygonize_mosaic,
                        polygon_spec,
                        pure=False,
                        retries=1,
                        key=f"footprint-polygons-{job_key}-{polygon_spec['name']}",
                    )
                )
        polygon_pending = set(polygon_futures)
        while polygon_pending:
            check_canceled(is_canceled)
            try:
                _done, polygon_pending = wait(list(polygon_pending), timeout=0.5, return_when="ALL_COMPLETED")
                polygon_pending = set(polygon_pending)
            except TimeoutError:
                continue
        return results, [f.result() for f in polygon_futures]
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(list(futures) + polygon_futures, force=True)
        raise


# --------------------------------------------------------------------------- the job


def _use_dask(options: BatchOptions, info: Callable[[str], None]) -> tuple[bool, str]:
    """(run on Dask, hint for the summary). workers=0 runs in-process; missing dask falls back with a hint."""
    from . import distributed as dist

    wanted = options.client is not None or bool(options.scheduler) or options.workers is None or options.workers > 0
    if not wanted:
        return False, ""
    if dist.dask_available():
        return True, ""
    if options.scheduler or (options.workers or 0) > 1:
        info("Dask is not installed: running serially in this process.")
    return False, dist.DASK_HINT


def _first_new(items: list[str], new: Sequence[str]) -> None:
    for item in new:
        if item not in items:
            items.append(item)


class _Job:
    """One run of a batch job: plan, blocks, polygons, merge. See the module docstring."""

    def __init__(
        self,
        paths,
        card,
        inference_options,
        polygon_options,
        options,
        out_path,
        probability_dir,
        progress,
        is_canceled,
        on_status,
        info,
    ) -> None:
        self.paths, self.card, self.options = paths, card, options
        self.inference_options, self.polygon_options = inference_options, polygon_options
        self.out_path, self.probability_dir = out_path, probability_dir
        self.progress, self.is_canceled, self.on_status, self.info = progress, is_canceled, on_status, info
        inference = dataclasses.asdict(inference_options)
        self.inference_dict = inference
        self.settings = {
            "inputs": [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in paths],
            "model": [card.name, card.version, card.sha256],
            "inference": {k: v for k, v in inference.items() if k not in ("batch_size", "num_threads", "device")},
            "block_size": options.block_size,
        }
        self.blocks_fp = mosaic_mod.fingerprint(self.settings)
        polygon_settings = [self.blocks_fp, dataclasses.asdict(polygon_options), bool(probability_dir)]
        self.polygons_fp = mosaic_mod.fingerprint(polygon_settings)
        self.job_dir, self.temporary = _job_folder(out_path, options)
        self.plan: Optional[_Plan] = None
        self.engine, self.workers = "serial (this process)", 0
        self.resumed: set[str] = set()
        self.settled: dict[str, int] = {}
        self.accounted = 0
        self.submitted: set[str] = set()
        self.ran_mosaics: set[str] = set()
        self.startup_seconds = 0.0

    # paths and specs
    def block_path(self, block: mosaic_mod.Block) -> Path:
        return self.job_dir / "blocks" / f"{block.block_id}.tif"

    def polygon_path(self, name: str) -> Path:
        return self.job_dir / "polygons" / f"{name}.{self.polygons_fp}.gpkg"

    def cog_path(self, name: str) -> Optional[Path]:
        return self.probability_dir / f"{name}_probability.tif" if self.probability_dir else None

    def all_blocks(self) -> list[mosaic_mod.Block]:
        assert self.plan is not None
        return [b for m in self.plan.mosaics for b in self.plan.blocks[m.name]]

    def mosaic(self, name: str) -> mosaic_mod.Mosaic:
        assert self.plan is not None
        return next(m for m in self.plan.mosaics if m.name == name)

    def block_spec(self, block: mosaic_mod.Block, inference: dict[str, Any]) -> dict[str, Any]:
        assert self.plan is not None
        return {
            "block_id": block.block_id,
            "block": block.to_dict(),
            "out_path": str(self.block_path(block)),
            "mosaic_vrt": self.mosaic(block.mosaic).vrt_path,
            "card_path": str(self.card.path),
            "inference": inference,
            "stats": self.plan.stats[block.mosaic],
        }

    def polygon_spec(self, mosaic: mosaic_mod.Mosaic) -> dict[str, Any]:
        assert self.plan is not None
        blocks = self.plan.blocks[mosaic.name]
        cog = self.cog_path(mosaic.name)
        return {
            "name": mosaic.name,
            "mosaic": dataclasses.asdict(mosaic),
            "blocks": [b.to_dict() for b in blocks],
            "block_paths": {b.block_id: str(self.block_path(b)) for b in blocks if self.block_path(b).exists()},
            "cores_vrt": str(self.job_dir / "mosaics" / f"{mosaic.name}_probability.vrt"),
            "polygon": dataclasses.asdict(self.polygon_options),
            "model": self.card.display_name,
            "polygons_path": str(self.polygon_path(mosaic.name)),
            "probability_path": str(cog) if cog else None,
        }

    def polygon_specs(self, results: list[dict]) -> list[dict[str, Any]]:
        """Specs for the mosaics whose blocks have all settled and whose polygons are not made yet."""
        assert self.plan is not None
        for result in results[self.accounted :]:
            self.settled[result["mosaic"]] += 1
        self.accounted = len(results)
        ready = []
        for mosaic in self.plan.mosaics:
            blocks = self.plan.blocks[mosaic.name]
            if mosaic.name in self.submitted or self.settled[mosaic.name] < len(blocks):
                continue
            self.submitted.add(mosaic.name)
            cog = self.cog_path(mosaic.name)
            fresh = mosaic.name not in self.ran_mosaics and self.polygon_path(mosaic.name).exists()
            if fresh and (cog is None or cog.exists()):
                continue
            if any(self.block_path(b).exists() for b in blocks):
                ready.append(self.polygon_spec(mosaic))
        return ready

    # stages
    def prepare(self) -> list[mosaic_mod.Block]:
        """Job folder, plan, record; returns the blocks still to run."""
        remove_stale_partials(
            [
                self.job_dir / "blocks",
                self.job_dir / "polygons",
                self.probability_dir,
                self.out_path.parent if self.out_path else None,
            ]
        )
        earlier = _prepare_job_folder(self.job_dir, self.options.resume, self.blocks_fp)
        if self.options.resume and earlier is None:
            self.info(f"No earlier job in {self.job_dir}: starting from the beginning.")
        self.plan = _plan(self.paths, self.card, self.inference_options, self.options.block_size, self.job_dir, earlier)
        record = {
            "version": JOB_VERSION,
            "blocks_fingerprint": self.blocks_fp,
            "settings": self.settings,
            "stats": self.plan.stats,
            "skipped": self.plan.skipped,
            "mosaics": {m.name: [t.path for t in m.tiles] for m in self.plan.mosaics},
        }
        write_text_atomically(self.job_dir / JOB_FILE, json.dumps(record, indent=1))
        blocks = self.all_blocks()
        self.resumed = {b.block_id for b in blocks if self.block_path(b).exists()}
        self.settled = {m.name: 0 for m in self.plan.mosaics}
        for block in blocks:
            self.settled[block.mosaic] += block.block_id in self.resumed
        if self.resumed:
            self.info(f"Resuming: {len(self.resumed)} of {len(blocks)} blocks are already done.")
        to_run = [b for b in blocks if b.block_id not in self.resumed]
        self.ran_mosaics = {b.mosaic for b in to_run}
        if self.probability_dir is not None:
            self.probability_dir.mkdir(parents=True, exist_ok=True)
        return to_run

    def start_engine(self, use_dask: bool) -> Optional[Any]:
        from . import distributed as dist

        if not use_dask:
            return None
        if self.options.client is not None:
            count = len(self.options.client.scheduler_info().get("workers", {}))
            handle = dist.ClusterHandle(self.options.client, None, f"Dask client ({count} workers)", count)
        else:
            scheduler = self.options.scheduler
            self.info(f"Connecting to {scheduler}..." if scheduler else "Starting Dask workers...")
            handle = dist.start_cluster(self.options.workers, scheduler)
        self.engine, self.workers = handle.description, handle.workers
        dist.register_worker_setup(handle, str(self.card.path), self.inference_options.device)
        return handle

    def run_blocks(self, to_run: list[mosaic_mod.Block], use_dask: bool) -> tuple[list[dict], list[dict], _Tracker]:
        from . import distributed as dist

        blocks = self.all_blocks()
        total_mp = sum(b.megapixels for b in blocks)
        resumed_mp = sum(b.megapixels for b in blocks if b.block_id in self.resumed)
        tracker = _Tracker(len(blocks), total_mp, len(self.resumed), resumed_mp, self.progress, self.on_status)
        tracker.report()
        handle = self.start_engine(use_dask and bool(to_run))
        # Throughput and the block phase count from here: cluster start-up is reported on its own.
        self.startup_seconds = time.monotonic() - tracker.started
        tracker.started = tracker.last_block_at = time.monotonic()
        inference = dict(self.inference_dict)
        if handle is not None and handle.cluster is not None and not inference.get("num_threads"):
            inference["num_threads"] = dist.threads_per_worker(handle.workers)  # share the cores, no oversubscription
        specs = [self.block_spec(b, inference) for b in to_run]
        try:
            if handle is not None:
                key = f"{self.blocks_fp}-{os.urandom(3).hex()}"
                results, polygons = _run_dask(handle.client, specs, self.polygon_specs, tracker, self.is_canceled, key)
            else:
                results, polygons = _run_serial(specs, self.polygon_specs, tracker, self.is_canceled)
        finally:
            if handle is not None and self.options.client is None:
                handle.close()
        return results, polygons, tracker

    def failures(self, results: list[dict]) -> list[str]:
        assert self.plan is not None
        failed = []
        by_id = {b.block_id: b for b in self.all_blocks()}
        for result in results:
            if result.get("status") == "done":
                continue
            block = by_id[result["block_id"]]
            mosaic = self.mosaic(block.mosaic)
            involved = _tiles_in_window(mosaic.tiles, mosaic, block.window)
            failed.append(f"{result['block_id']} (tiles {', '.join(involved) or '?'}): {result.get('error')}")
        return failed

    def merge(self) -> tuple[list[Any], list[dict[str, Any]], Optional[str], list[Path]]:
        """Every mosaic's layer, in the first mosaic's CRS; written to the output when there is one."""
        from ..common.vocabulary import BATCH_FIELDS, BUILDING_FIELDS
        from ..io.vector_io import read_polygons, write_polygons

        assert self.plan is not None
        geometries, attributes, cogs = [], [], []
        crs_wkt = self.plan.mosaics[0].crs_wkt
        for mosaic in self.plan.mosaics:
            check_canceled(self.is_canceled)
            layer = self.polygon_path(mosaic.name)
            if not layer.exists():
                continue
            data = read_polygons(layer, target_crs_wkt=crs_wkt)
            # GeoPackage layers hold MultiPolygons; a building is one polygon, as detect returns it.
            geometries += [
                g.geoms[0] if g.geom_type == "MultiPolygon" and len(g.geoms) == 1 else g for g in data.geometries
            ]
            attributes += data.attributes
            cog = self.cog_path(mosaic.name)
            if cog is not None and cog.exists():
                cogs.append(cog)
        for attrs in attributes:
            attrs.pop("id", None)  # the layer's own key numbers the buildings (core/common/vocabulary.py)
            attrs.pop("fid", None)
            attrs["regularized"] = bool(attrs.get("regularized"))
        if self.out_path is not None:
            check_canceled(self.is_canceled)
            write_polygons(
                self.out_path,
                geometries,
                attributes,
                crs_wkt,
                fields={**BUILDING_FIELDS, **BATCH_FIELDS},
                layer_name="buildings",
            )
        return geometries, attributes, crs_wkt, cogs

    def cleanup(self, failed: bool, canceled: bool) -> Optional[Path]:
        """Remove the job folder unless it can still be useful; returns it when kept."""
        keep = not self.temporary and (self.options.keep_job or failed or canceled)
        if not keep:
            shutil.rmtree(self.job_dir, ignore_errors=True)
            return None
        return self.job_dir


def run_batch(
    inputs: Sequence[Union[str, Path]],
    out_vector: Optional[Union[str, Path]],
    card: Union[ModelCard, str],
    inference_options: Any = None,
    polygon_options: Any = None,
    options: Optional[BatchOptions] = None,
    progress: Optional[ProgressCallback] = None,
    is_canceled: Optional[CancelCallback] = None,
    on_status: Optional[Callable[[BatchProgress], None]] = None,
    on_info: Optional[Callable[[str], None]] = None,
) -> BatchResult:
    """Detect buildings over all `inputs` (rasters, VRTs, folders) into one layer at `out_vector`.

    out_vector None: nothing is written, the polygons come back in the result (Processing writes them).
    On cancel or error nothing is written at the output; the job folder keeps the finished blocks.
    """
    from ..engine.inference import InferenceOptions, check_batch_size
    from ..vectors.polygons import PolygonOptions

    started = time.monotonic()
    options = options or BatchOptions()
    info = on_info or (lambda _message: None)
    card = card if isinstance(card, ModelCard) else find_model(card)
    if card.path is None:
        raise InputError(f"Model '{card.name}' has no card file; save it with its card so workers can load it.")
    card.validate()
    inference_options = inference_options or InferenceOptions()
    polygon_options = polygon_options or PolygonOptions(threshold=card.threshold)
    polygon_options.validate()
    check_batch_size(getattr(inference_options, "batch_size", None))  # before the model loads, not in a worker
    if options.block_size < MIN_BLOCK_SIZE:
        raise InputError(f"Block size must be at least {MIN_BLOCK_SIZE} pixels, not {options.block_size}.")
    out_path = Path(out_vector) if out_vector else None
    probability_dir = Path(options.probability_dir) if options.probability_dir else None
    paths = mosaic_mod.expand_inputs(inputs, options.pattern)
    _check_outputs(paths, out_path, probability_dir)
    use_dask, hint = _use_dask(options, info)
    job = _Job(
        paths,
        card,
        inference_options,
        polygon_options,
        options,
        out_path,
        probability_dir,
        progress,
        is_canceled,
        on_status,
        info,
    )
    try:
        to_run = job.prepare()
        results, polygon_results, tracker = job.run_blocks(to_run, use_dask)
        check_canceled(is_canceled)
        tracker.report("polygons")
        failed = job.failures(results)
        warnings: list[str] = []
        for item in list(results) + list(polygon_results):
            _first_new(warnings, item.get("warnings", []))
        geometries, attributes, crs_wkt, cogs = job.merge()
    except CanceledError:
        kept = job.cleanup(failed=False, canceled=True)
        if kept is not None and any(p.suffix == ".tif" for p in (kept / "blocks").iterdir()):
            raise CanceledError(
                f"Canceled; no output was written. The finished blocks are kept in {kept}: run the same job "
                "again with Resume (--resume) to continue from them."
            ) from None
        raise
    except BaseException:
        if job.temporary:
            shutil.rmtree(job.job_dir, ignore_errors=True)
        raise
    if progress is not None:
        progress(1.0)
    assert job.plan is not None
    return BatchResult(
        buildings_path=out_path,
        probability_paths=cogs,
        n_buildings=len(geometries),
        geometries=geometries,
        attributes=attributes,
        crs_wkt=crs_wkt,
        n_tiles=len(job.plan.tiles),
        skipped=job.plan.skipped,
        n_mosaics=len(job.plan.mosaics),
        blocks_total=tracker.total_blocks,
        blocks_resumed=len(job.resumed),
        blocks_run=len(results),
        blocks_failed=failed,
        engine=job.engine,
        workers=job.workers,
        seconds=time.monotonic() - started,
        block_phase_seconds=tracker.last_block_at - tracker.started,
        block_compute_seconds=tracker.compute_seconds,
        megapixels=sum(m.megapixels for m in job.plan.mosaics),
        model=card.display_name,
        job_dir=job.cleanup(failed=bool(failed), canceled=False),
        hint=hint,
        warnings=warnings,
        startup_seconds=job.startup_seconds,
        peak_block_rss_mb=max([float(r.get("peak_rss_mb", 0.0)) for r in results] or [0.0]),
    )


def _tiles_in_window(tiles: Sequence[mosaic_mod.TileInfo], mosaic: mosaic_mod.Mosaic, window) -> list[str]:
    """Names of the tiles a block window reads."""
    a, _b, c, _d, e, f = mosaic.transform
    col, row, width, height = window
    left, right = c + a * col, c + a * (col + width)
    top, bottom = f + e * row, f + e * (row + height)
    x0, x1, y0, y1 = min(left, right), max(left, right), min(top, bottom), max(top, bottom)
    return [t.name for t in tiles if t.bounds[0] < x1 and t.bounds[2] > x0 and t.bounds[1] < y1 and t.bounds[3] > y0]
