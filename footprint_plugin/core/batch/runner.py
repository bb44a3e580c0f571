"""Big-area detection: many tiles as seamless mosaics, cut into blocks, run on Dask workers or serially,
resumable from a job folder.

A job:
1. Locks its output and its job folder (core/batch/lock.py): a second run on either is refused. The job
   folder is new, empty or one of this plugin's (core/batch/jobdir.py); the inputs are fingerprinted by
   content.
2. Reads every input's header (a corrupt tile is skipped and reported), groups touching tiles of one
   grid into mosaics (core/batch/mosaic.py) and cuts each into blocks with a margin on the mosaic's
   inference tile grid (core/batch/planning.py). A job that cannot fit the disk, or that is estimated at
   hours and not confirmed, stops here. Each mosaic's input-scaling statistics are computed once, so
   every block is scaled like the whole mosaic (per-block statistics would make seams).
3. Runs `predict_raster` on every block not already done (core/batch/blocks.py, on the engines of
   core/batch/engines.py). A block is done when its probability GeoTIFF matches its line (size, sha256)
   in the job's manifest; `--resume` skips those, and recomputes any other.
4. Reads the blocks' cores back as one probability VRT per mosaic and polygonizes it with the
   block-wise polygonizer, which joins the buildings cut by its seams; a building gets the `tile`
   of the input tile holding its representative point.
5. Merges all mosaics into one layer (the first mosaic's CRS) and writes it atomically. When a block or
   a mosaic layer failed, nothing is written: the job raises BlocksFailedError naming them, and keeps
   its finished blocks for a resume.

Blocks run on a Dask cluster (a LocalCluster by default, or `scheduler=` an existing one) or, with
workers=0 or without dask, in this process. Each process loads the model once (core/batch/model_cache.py).
A worker that dies mid-block has its block re-run elsewhere by the scheduler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled
from ..common.errors import CanceledError, InputError, ModelError
from ..io.atomic import remove_stale_partials
from ..zoo.modelcard import ModelCard, find_model
from . import mosaic as mosaic_mod
from .engines import Tracker, run_dask, run_serial, use_dask
from .jobdir import JOB_VERSION, JobFolder, changed_inputs, check_not_inside, content_key, fingerprint_inputs
from .layout import JobLayout, PolygonQueue, merge_layers
from .lock import JobLock
from .options import MIN_BLOCK_SIZE, BatchOptions, BatchProgress, BatchResult, BlocksFailedError
from .planning import Plan, add_scaling_stats, check_job_size, check_outputs, failure_report, plan_job


@dataclass
class JobRequest:
    """What one batch run is asked to do, checked (see `_request`)."""

    paths: list[Path]
    card: ModelCard
    inference_options: Any
    polygon_options: Any
    options: BatchOptions
    out_path: Optional[Path]
    probability_dir: Optional[Path]


@dataclass
class Callbacks:
    progress: Optional[ProgressCallback]
    is_canceled: Optional[CancelCallback]
    on_status: Optional[Callable[[BatchProgress], None]]
    info: Callable[[str], None]


def _first_new(items: list[str], new: Sequence[str]) -> None:
    for item in new:
        if item not in items:
            items.append(item)


class Job:
    """One run of a batch job: locks, folder, plan, blocks, polygons, merge. See the module docstring."""

    def __init__(self, request: JobRequest, calls: Callbacks) -> None:
        self.request, self.calls = request, calls
        self.options, self.card = request.options, request.card
        if self.options.job_dir:
            self.folder = JobFolder(Path(self.options.job_dir))
        elif request.out_path is not None:
            self.folder = JobFolder(request.out_path.with_name(request.out_path.name + ".job"))
        else:
            self.folder = JobFolder(Path(tempfile.mkdtemp(prefix="footprint_batch_")), temporary=True)
        self.job_dir = self.folder.path
        self.job_lock = JobLock(self.folder.lock_path, f"the job folder {self.job_dir}")
        out = request.out_path
        self.out_lock = JobLock(out.with_name(out.name + ".lock"), f"the output {out}") if out else None
        self.inference_dict = dataclasses.asdict(request.inference_options)
        self.plan: Optional[Plan] = None
        self.blocks_fp = ""
        self.engine, self.workers = "serial (this process)", 0
        self.layout = JobLayout(self.job_dir, self.card, request.polygon_options, request.probability_dir)
        self.resumed: set[str] = set()
        self.queue: Optional[PolygonQueue] = None
        self.made_probability_dir = False
        self.startup_seconds = 0.0
        self.warnings: list[str] = []

    # stages
    def open(self) -> None:
        """Lock the output and the job folder, check the folder is ours, fingerprint the inputs, start its record."""
        info, options = self.calls.info, self.options
        if self.out_lock is not None:
            self.out_lock.acquire(info)
        self.folder.earlier_record()  # refuses a folder that is not ours before anything is written into it
        self.folder.make()
        self.job_lock.acquire(info)
        earlier = self.folder.earlier_record()
        if options.resume and earlier is None:
            info(f"No earlier job in {self.job_dir}: starting from the beginning.")
        fingerprints = fingerprint_inputs(self.request.paths, (earlier or {}).get("inputs"))
        settings = {
            "inputs": content_key(fingerprints),
            "model": [self.card.name, self.card.version, self.card.sha256],
            "inference": {
                k: v for k, v in self.inference_dict.items() if k not in ("batch_size", "num_threads", "device")
            },
            "block_size": options.block_size,
        }
        self.blocks_fp = mosaic_mod.fingerprint(settings)
        polygon_settings = [
            self.blocks_fp,
            dataclasses.asdict(self.request.polygon_options),
            bool(self.request.probability_dir),
        ]
        self.layout.polygons_fp = mosaic_mod.fingerprint(polygon_settings)
        if options.resume and earlier is not None:
            self._check_resumable(earlier, fingerprints)
            self.folder.adopt(earlier)
        else:
            self.folder.start(earlier)
        self.folder.save(
            inputs=fingerprints,
            inputs_fingerprint=mosaic_mod.fingerprint(settings["inputs"]),
            blocks_fingerprint=self.blocks_fp,
            settings=settings,
        )

    def _check_resumable(self, earlier: dict[str, Any], fingerprints: dict[str, dict]) -> None:
        where = f"The job in {self.job_dir}"
        if earlier.get("version") != JOB_VERSION:
            raise InputError(f"{where} was made by another plugin version. Run without --resume to start over.")
        changed = changed_inputs(earlier.get("inputs", {}), fingerprints)
        if changed:
            raise InputError(
                f"{where} was started with other input files: {', '.join(changed[:10])} changed, came or went "
                "since, so its blocks cannot be reused. Run without --resume to start over."
            )
        if earlier.get("blocks_fingerprint") != self.blocks_fp:
            raise InputError(
                f"{where} was started with another model or other detection settings, so its blocks cannot be "
                "reused. Run with the same settings to resume, or without --resume to start over."
            )

    def prepare(self) -> list[mosaic_mod.Block]:
        """Plan, verify what is done, check the job's size, compute the statistics; returns the blocks to run."""
        request, info = self.request, self.calls.info
        remove_stale_partials([self.job_dir / "blocks", self.job_dir / "polygons", request.probability_dir])
        remove_stale_partials([request.out_path.parent if request.out_path else None])
        self.plan = plan = plan_job(
            request.paths,
            self.card,
            request.inference_options,
            self.options.block_size,
            self.job_dir,
            self.folder.add_files,
        )
        blocks = plan.all_blocks()
        planned = {b.block_id: self.layout.block_path(b) for b in blocks}
        self.folder.add_files([f"blocks/{b}.tif" for b in planned])
        self.folder.add_files([f"polygons/{self.layout.polygon_path(m.name).name}" for m in plan.mosaics])
        self.resumed = self.folder.verified_blocks(planned, info)
        total_mp = sum(b.megapixels for b in blocks) or 1.0
        remaining = 1.0 - sum(b.megapixels for b in blocks if b.block_id in self.resumed) / total_mp
        folders = (self.job_dir, request.probability_dir)
        size_warnings = check_job_size(
            plan, self.card, request.inference_options, folders, remaining, self.options.confirmed
        )
        for line in size_warnings:
            info(line)
        _first_new(self.warnings, size_warnings)
        add_scaling_stats(plan, self.card, self.folder.record.get("stats", {}) if self.options.resume else {})
        self.folder.save(
            stats=plan.stats, skipped=plan.skipped, mosaics={m.name: [t.path for t in m.tiles] for m in plan.mosaics}
        )
        blocks = plan.all_blocks()
        fresh = self.layout.verified_polygons(plan, self.folder, self.resumed)
        self.queue = PolygonQueue(plan, self.layout, self.resumed, fresh)
        if self.resumed:
            info(f"Resuming: {len(self.resumed)} of {len(blocks)} blocks are already done.")
        if request.probability_dir is not None and not request.probability_dir.is_dir():
            request.probability_dir.mkdir(parents=True)
            self.made_probability_dir = True
        return [b for b in blocks if b.block_id not in self.resumed]

    def record_block(self, result: dict[str, Any]) -> None:
        if result.get("status") == "done" and result.get("digest"):
            self.folder.record_done({"block": result["block_id"], **result["digest"]})

    def start_engine(self, wanted: bool) -> Optional[Any]:
        from . import distributed as dist

        if not wanted:
            return None
        is_canceled = self.calls.is_canceled
        if self.options.client is not None:
            count = len(self.options.client.scheduler_info().get("workers", {}))
            handle = dist.ClusterHandle(self.options.client, None, f"Dask client ({count} workers)", count)
        else:
            scheduler = self.options.scheduler
            self.calls.info(f"Connecting to {scheduler}..." if scheduler else "Starting Dask workers...")
            handle = dist.start_cluster(self.options.workers, scheduler, is_canceled)
        try:
            self.engine, self.workers = handle.description, handle.workers
            device = self.request.inference_options.device
            dist.register_worker_setup(handle, str(self.card.path), device, is_canceled)
        except BaseException:
            if self.options.client is None:
                handle.close()
            raise
        return handle

    def run_blocks(self, to_run: list[mosaic_mod.Block], dask: bool) -> tuple[list[dict], list[dict], Tracker]:
        from . import distributed as dist

        assert self.plan is not None
        blocks = self.plan.all_blocks()
        resumed_mp = sum(b.megapixels for b in blocks if b.block_id in self.resumed)
        totals = (len(blocks), sum(b.megapixels for b in blocks), len(self.resumed), resumed_mp)
        tracker = Tracker(totals, self.calls.progress, self.calls.on_status, self.record_block)
        tracker.report()
        handle = self.start_engine(dask and bool(to_run))
        # Throughput and the block phase count from here: cluster start-up is reported on its own.
        self.startup_seconds = time.monotonic() - tracker.started
        tracker.started = tracker.last_block_at = time.monotonic()
        inference = dict(self.inference_dict)
        if handle is not None and handle.cluster is not None and not inference.get("num_threads"):
            inference["num_threads"] = dist.threads_per_worker(handle.workers)  # share the cores, no oversubscription
        specs = [self.layout.block_spec(self.plan, b, inference) for b in to_run]
        is_canceled = self.calls.is_canceled
        try:
            if handle is not None:
                key = f"{self.blocks_fp}-{os.urandom(3).hex()}"
                results, polygons = run_dask(handle.client, specs, self.queue, tracker, is_canceled, key)
            else:
                results, polygons = run_serial(specs, self.queue, tracker, is_canceled)
        finally:
            if handle is not None and self.options.client is None:
                handle.close()
        for item in polygons:
            if item.get("status") == "done":
                entry = {"fp": self.layout.polygons_fp, "digest": item["digest"]}
                self.folder.record_done(
                    {"polygons": item["mosaic"], **entry, "probability_digest": item["probability_digest"]}
                )
        return results, polygons, tracker

    def check_failures(self, results: list[dict], polygons: list[dict]) -> None:
        """Raise BlocksFailedError naming every failed block (and its tiles) and mosaic layer."""
        assert self.plan is not None
        failed = failure_report(self.plan, results, polygons)
        if failed is not None:
            kept = self.close("failed")
            raise BlocksFailedError(*failed, kept)

    def close(self, outcome: str) -> Optional[Path]:
        """Release the locks; remove the job folder unless it is still useful. Returns it when kept.

        Kept: after a success with keep_job, and after a failure or cancel that left finished blocks to resume
        from (never a temporary folder). Removing it deletes only what the job made."""
        if outcome == "done":
            keep = self.options.keep_job and not self.folder.temporary
        else:
            keep = not self.folder.temporary and bool(self.folder.record) and self.folder.has_finished_blocks()
        if keep:
            self.job_lock.release()
        else:
            self.folder.remove(self.job_lock.release)
        if self.out_lock is not None:
            self.out_lock.release()
        if outcome != "done" and self.made_probability_dir:
            with contextlib.suppress(OSError):
                self.request.probability_dir.rmdir()  # only when empty: no empty folder after a failure
        return self.job_dir if keep else None

    def execute(self, dask: bool) -> tuple[list[dict], Tracker, tuple]:
        """All stages; on any failure or cancel the job folder is closed (kept only when worth resuming)."""
        try:
            self.open()
            to_run = self.prepare()
            results, polygons, tracker = self.run_blocks(to_run, dask)
            check_canceled(self.calls.is_canceled)
            tracker.report("polygons")
            for item in list(results) + list(polygons):
                _first_new(self.warnings, item.get("warnings", []))
            self.check_failures(results, polygons)
            assert self.plan is not None
            merged = merge_layers(self.plan, self.layout, self.request.out_path, self.calls.is_canceled)
        except BlocksFailedError:
            raise
        except CanceledError:
            kept = self.close("canceled")
            if kept is not None:
                raise CanceledError(
                    f"Canceled; no output was written. The finished blocks are kept in {kept}: run the same job "
                    "again with Resume (--resume) to continue from them."
                ) from None
            raise
        except BaseException:
            self.close("error")
            raise
        return results, tracker, merged


def _request(
    inputs: Sequence[Union[str, Path]],
    out_vector: Optional[Union[str, Path]],
    card: Union[ModelCard, str],
    inference_options: Any,
    polygon_options: Any,
    options: BatchOptions,
) -> JobRequest:
    """Every check that needs no pixels and no model, before anything is written."""
    from ..engine.options import InferenceOptions, check_batch_size
    from ..vectors.polygons import PolygonOptions

    card = card if isinstance(card, ModelCard) else find_model(card)
    if card.path is None:
        raise ModelError(f"Model '{card.name}' has no card file; save it with its card so workers can load it.")
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
    check_outputs(paths, out_path, probability_dir)
    job_dir = Path(options.job_dir) if options.job_dir else None
    if job_dir is None and out_path is not None:
        job_dir = out_path.with_name(out_path.name + ".job")
    if job_dir is not None:
        check_not_inside(job_dir, paths, {"The output": out_path, "The probability folder": probability_dir})
    return JobRequest(paths, card, inference_options, polygon_options, options, out_path, probability_dir)


def _result(job: Job, results: list[dict], tracker: Tracker, merged: tuple, hint: str, started: float) -> BatchResult:
    geometries, attributes, crs_wkt, cogs = merged
    plan = job.plan
    assert plan is not None
    return BatchResult(
        buildings_path=job.request.out_path,
        probability_paths=cogs,
        n_buildings=len(geometries),
        geometries=geometries,
        attributes=attributes,
        crs_wkt=crs_wkt,
        n_tiles=len(plan.tiles),
        skipped=plan.skipped,
        n_mosaics=len(plan.mosaics),
        blocks_total=tracker.total_blocks,
        blocks_resumed=len(job.resumed),
        blocks_run=len(results),
        blocks_failed=[],
        engine=job.engine,
        workers=job.workers,
        seconds=time.monotonic() - started,
        block_phase_seconds=tracker.last_block_at - tracker.started,
        block_compute_seconds=tracker.compute_seconds,
        megapixels=sum(m.megapixels for m in plan.mosaics),
        model=job.card.display_name,
        job_dir=job.close("done"),
        hint=hint,
        warnings=job.warnings,
        startup_seconds=job.startup_seconds,
        peak_block_rss_mb=max([float(r.get("peak_rss_mb", 0.0)) for r in results] or [0.0]),
    )


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
    A failed block or mosaic layer raises BlocksFailedError (nothing written) once every block has run.
    """
    started = time.monotonic()
    options = options or BatchOptions()
    info = on_info or (lambda _message: None)
    request = _request(inputs, out_vector, card, inference_options, polygon_options, options)
    dask, hint = use_dask(options, info)
    job = Job(request, Callbacks(progress, is_canceled, on_status, info))
    results, tracker, merged = job.execute(dask)
    if progress is not None:
        progress(1.0)
    return _result(job, results, tracker, merged, hint, started)
