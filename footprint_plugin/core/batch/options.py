"""What a batch job takes and gives: its options, its progress reports, its result, and the error of a
job whose blocks failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..common.errors import FootprintError

DEFAULT_BLOCK_SIZE = 4096
MIN_BLOCK_SIZE = 128
# How many failed blocks an error message lists one by one.
LISTED_FAILURES = 20


class BlocksFailedError(FootprintError):
    """Blocks or mosaic layers could not be made: nothing was written, the finished blocks are kept for a resume."""

    def __init__(self, title: str, failures: list[str], job_dir: Optional[Path]) -> None:
        shown = failures[:LISTED_FAILURES]
        lines = [f"{title}, so no output was written:"] + [f"  {line}" for line in shown]
        if len(failures) > len(shown):
            lines.append(f"  ... and {len(failures) - len(shown)} more.")
        if job_dir is not None:
            lines.append(
                f"The finished blocks are kept in {job_dir}: fix the tiles named above, then run the same job "
                "again with Resume (--resume) to compute only what failed."
            )
        else:
            lines.append("Fix the tiles named above and run again; set a job folder to keep the finished blocks.")
        super().__init__("\n".join(lines))
        self.failures = failures


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
    confirmed: bool = False  # the user accepts a job estimated at hours (CLI --yes)


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
    """A finished job (one with failed blocks raises BlocksFailedError instead)."""

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
