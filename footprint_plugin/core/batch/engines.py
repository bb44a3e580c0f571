"""Where the blocks run: serially in this process, or on a Dask cluster, with progress as they finish.

Both engines hand a mosaic's polygons to the same worker pool as soon as all its blocks are done (a
mosaic with a failed block is not polygonized: the job then writes nothing).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Optional

from ..common.callbacks import ProgressCallback, check_canceled
from .blocks import polygonize_safely, run_block
from .options import BatchOptions, BatchProgress

# Share of the progress bar for inference over blocks; polygons and the merge take the rest.
BLOCK_SHARE = 0.9


class Tracker:
    """Counts blocks and megapixels, reports them, and hands each finished block to `on_block` (the manifest)."""

    def __init__(
        self,
        totals: tuple[int, float, int, float],
        progress: Optional[ProgressCallback],
        on_status: Optional[Callable[[BatchProgress], None]],
        on_block: Callable[[dict[str, Any]], None],
    ) -> None:
        """totals: (blocks, megapixels, resumed blocks, resumed megapixels)."""
        self.total_blocks, self.total_mp, self.resumed, self.resumed_mp = totals
        self.done, self.done_mp = 0, 0.0
        self.started = time.monotonic()
        self.progress, self.on_status, self.on_block = progress, on_status, on_block
        self.compute_seconds = 0.0
        self.last_block_at = self.started

    def block_finished(self, result: dict[str, Any]) -> None:
        self.on_block(result)
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


def run_serial(specs, polygon_specs, tracker: Tracker, is_canceled) -> tuple[list[dict], list[dict]]:
    results = []
    for spec in specs:
        check_canceled(is_canceled)
        result = run_block(spec, is_canceled)
        results.append(result)
        tracker.block_finished(result)
    polygon_results = []
    for make_spec in polygon_specs(results):
        check_canceled(is_canceled)
        polygon_results.append(polygonize_safely(make_spec))
    return results, polygon_results


def _wait(pending: set, return_when: str, is_canceled) -> tuple[set, set]:
    """(done, still pending) after at most half a second; a cancel is checked first."""
    from distributed import wait

    check_canceled(is_canceled)
    try:
        done, left = wait(list(pending), timeout=0.5, return_when=return_when)
    except TimeoutError:
        return set(), pending
    return set(done), set(left)


def run_dask(client, specs, polygon_specs, tracker: Tracker, is_canceled, job_key: str):
    """Submit every block; as they finish, hand each completed mosaic's polygons to a worker too."""
    futures = {
        client.submit(run_block, spec, key=f"footprint-block-{job_key}-{spec['block_id']}", pure=False, retries=1): spec
        for spec in specs
    }
    pending = set(futures)
    results: list[dict] = []
    polygon_futures = []
    try:
        while pending:
            done, pending = _wait(pending, "FIRST_COMPLETED", is_canceled)
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
                        polygonize_safely,
                        polygon_spec,
                        pure=False,
                        retries=1,
                        key=f"footprint-polygons-{job_key}-{polygon_spec['name']}",
                    )
                )
        polygon_pending = set(polygon_futures)
        while polygon_pending:
            _done, polygon_pending = _wait(polygon_pending, "ALL_COMPLETED", is_canceled)
        return results, [f.result() for f in polygon_futures]
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(list(futures) + polygon_futures, force=True)
        raise


def use_dask(options: BatchOptions, info: Callable[[str], None]) -> tuple[bool, str]:
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
