"""The job folder: it belongs to its job, and its record says what is finished.

- **Ownership.** A job folder is new, empty, or holds this plugin's marker (`footprint_job.json`, with
  a job id and the inputs' fingerprint). Any other non-empty folder is refused and left untouched.
- **What the job made.** The marker lists every file the job creates (mosaic VRTs, blocks, polygon
  layers) before it creates them, and the folders it made. Cleanup deletes those and nothing else, so a
  folder that also holds other files keeps them.
- **What is finished.** An append-only manifest (`footprint_manifest.jsonl`) gets one line per finished
  block or mosaic layer: size and sha256. A resume reuses a file only when it matches its line; any
  other (changed, cut short, never recorded) is computed again.
- **Inputs by content.** Every input file (and each file a VRT input reads) is fingerprinted by the
  sha256 of its bytes; on POSIX an unchanged size, mtime, ctime and inode reuse the earlier hash (ctime
  changes on any write or `touch`, so a tile edited in place with its mtime put back is still hashed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from ..common.errors import InputError, OutputError
from ..io.atomic import PARTIAL_RE, companions, write_text_atomically

MARKER = "footprint_job.json"
MANIFEST = "footprint_manifest.jsonl"
LOCK_NAME = "footprint_job.lock"
JOB_KIND = "footprint_plugin batch job"
JOB_VERSION = 2
SUBFOLDERS = ("blocks", "mosaics", "polygons")
# Temporary files of the job's own writers inside its subfolders (window VRTs, VRTs being written).
_TEMP_RE = re.compile(r"^\..+\.\d+\.window\.vrt(\.tmp)?$|^.+\.vrt\.tmp$")
_HASH_CHUNK = 1 << 20
_HASH_THREADS = 4


def file_digest(path: Path) -> dict[str, Any]:
    """{"size", "sha256"} of a file's bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def matches(path: Path, entry: Optional[dict[str, Any]]) -> bool:
    """True when the file exists with the size and sha256 its manifest entry records."""
    if not entry:
        return False
    try:
        if path.stat().st_size != entry.get("size"):
            return False
        return file_digest(path)["sha256"] == entry.get("sha256")
    except OSError:
        return False


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _input_files(paths: Sequence[Path]) -> list[Path]:
    """The inputs and, for VRT inputs, the files they read."""
    from ..io import raster_io

    files: list[Path] = []
    for path in paths:
        files.append(path)
        if path.suffix.lower() != ".vrt":
            continue
        with contextlib.suppress(Exception):  # a broken VRT is skipped, with its reason, by the planner
            with raster_io.opened(path) as ds:
                files += [Path(f).resolve() for f in ds.files[1:]]
    return list(dict.fromkeys(files))


def fingerprint_inputs(paths: Sequence[Path], earlier: Optional[dict[str, Any]] = None) -> dict[str, dict]:
    """{file: {"size", "sha256", "stat"}} for every input file (see the module docstring)."""
    earlier = earlier or {}

    def one(path: Path) -> tuple[str, dict]:
        try:
            key = _stat_key(path)
            old = earlier.get(str(path))
            if os.name == "posix" and isinstance(old, dict) and old.get("stat") == key:
                return str(path), old
            return str(path), {**file_digest(path), "stat": key}
        except OSError:
            return str(path), {"missing": True}

    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        return dict(pool.map(one, _input_files(paths)))


def changed_inputs(earlier: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """Names of the input files whose content differs between two fingerprints (or that came or went)."""
    names = []
    for path in sorted(set(earlier) | set(current)):
        a, b = earlier.get(path) or {}, current.get(path) or {}
        if (a.get("size"), a.get("sha256")) != (b.get("size"), b.get("sha256")):
            names.append(Path(path).name)
    return names


def content_key(fingerprints: dict[str, dict]) -> dict[str, list]:
    """The part of the fingerprints that says what the inputs hold (no timestamps)."""
    return {path: [entry.get("size"), entry.get("sha256")] for path, entry in fingerprints.items()}


def _made_folders(path: Path) -> list[str]:
    """Create `path` and its missing parents; returns the folders made, deepest first."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(str(probe))
        probe = probe.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the job folder {path} ({exc}). Choose a writable folder.") from None
    return missing


def _unlink_file(path: Path) -> None:
    """Delete a file and its GDAL sidecars; folders are never touched."""
    for candidate in companions(path):
        if candidate.is_file() or candidate.is_symlink():
            with contextlib.suppress(OSError):
                candidate.unlink()


class JobFolder:
    """One job's folder: ownership, marker, manifest and cleanup (see the module docstring)."""

    def __init__(self, path: Path, temporary: bool = False) -> None:
        self.path = Path(path)
        self.temporary = temporary
        self.record: dict[str, Any] = {}
        self.made: list[str] = []  # folders this run created, deepest first

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    # ownership
    def earlier_record(self) -> Optional[dict[str, Any]]:
        """The record of the job that owns the folder, None when it is new or empty; refuses any other folder."""
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"The job folder {self.path} is a file. Choose another job folder.")
        if not self.path.is_dir():
            return None
        try:
            record = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and record.get("kind") == JOB_KIND:
            return record
        others = sorted(entry.name for entry in self.path.iterdir() if not self._own_leftover(entry.name))
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise OutputError(
                f"The job folder {self.path} is not empty ({shown}) and is not a batch job folder of this plugin "
                f"(it has no valid {MARKER}), so nothing in it was touched. Choose an empty or new folder "
                "(a job folder of an older plugin version cannot be resumed: delete it or choose another)."
            )
        return None

    @staticmethod
    def _own_leftover(name: str) -> bool:
        """Files a run of ours leaves before its marker exists: its lock, the marker's temporary copy."""
        return name == LOCK_NAME or (bool(PARTIAL_RE.match(name)) and name.startswith((".footprint_job.",)))

    def make(self) -> None:
        """Create the folder when it does not exist yet (remembering which folders this job made)."""
        if self.temporary:
            self.made = [str(self.path)]
        elif not self.path.is_dir():
            self.made = _made_folders(self.path)

    def start(self, earlier: Optional[dict[str, Any]]) -> None:
        """A fresh record; the files of an earlier job in the folder are removed first (not resumed)."""
        made = list(self.made)
        if earlier is not None:
            self.remove_files(earlier)
            made += [f for f in earlier.get("made_folders", []) if f not in made]
        self.record = {"kind": JOB_KIND, "version": JOB_VERSION, "job_id": uuid.uuid4().hex, "made_folders": made}
        self.record["files"] = []
        self.save()
        for name in SUBFOLDERS:
            (self.path / name).mkdir(exist_ok=True)

    def adopt(self, earlier: dict[str, Any]) -> None:
        """Continue the earlier job (resume): same id, same files."""
        self.record = dict(earlier)
        for name in SUBFOLDERS:
            (self.path / name).mkdir(exist_ok=True)

    def save(self, **changes: Any) -> None:
        """Update and write the record atomically."""
        self.record.update(changes)
        write_text_atomically(self.marker, json.dumps(self.record, indent=1))

    def add_files(self, relative: Iterable[str]) -> None:
        """Record files before the job writes them, so cleanup knows them even after a kill."""
        files = set(self.record.get("files", []))
        new = set(relative) - files
        if new:
            self.save(files=sorted(files | new))

    # the manifest
    def record_done(self, entry: dict[str, Any]) -> None:
        """Append one finished block or mosaic layer to the manifest (one line; a torn last line is ignored)."""
        with open(self.manifest_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            with contextlib.suppress(OSError):
                os.fsync(handle.fileno())

    def manifest(self) -> tuple[dict[str, dict], dict[str, dict]]:
        """(block id -> entry, mosaic name -> polygons entry); the last line of each wins."""
        blocks: dict[str, dict] = {}
        polygons: dict[str, dict] = {}
        try:
            lines = self.manifest_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return blocks, polygons
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "block" in entry:
                blocks[str(entry["block"])] = entry
            elif isinstance(entry, dict) and "polygons" in entry:
                polygons[str(entry["polygons"])] = entry
        return blocks, polygons

    def verified_blocks(self, planned: dict[str, Path], info: Callable[[str], None]) -> set[str]:
        """The planned blocks whose file matches the manifest; any other block file is removed."""
        entries, _polygons = self.manifest()
        verified, redone = set(), []
        for block_id, path in planned.items():
            if not path.exists():
                continue
            if matches(path, entries.get(block_id)):
                verified.add(block_id)
            else:
                _unlink_file(path)
                redone.append(block_id)
        if redone:
            info(
                f"{len(redone)} block file(s) did not match the job's record (changed, cut short or never "
                f"finished) and are computed again: {', '.join(redone[:10])}{' ...' if len(redone) > 10 else ''}"
            )
        return verified

    # cleanup
    def remove_files(self, record: dict[str, Any]) -> None:
        """Delete the files a job recorded, its temporaries and its manifest; other files stay."""
        for relative in record.get("files", []):
            if ".." not in Path(relative).parts:
                _unlink_file(self.path / relative)
        for name in SUBFOLDERS:
            folder = self.path / name
            with contextlib.suppress(OSError):
                for entry in folder.iterdir():
                    if PARTIAL_RE.match(entry.name) or _TEMP_RE.match(entry.name):
                        _unlink_file(entry)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        _unlink_file(self.manifest_path)

    def remove(self, release_lock: Callable[[], None]) -> None:
        """Delete everything this job made: its files and marker (still under its lock), then the folders
        it created, where empty. A run that never started its record only removes the folders it made."""
        if self.record:
            self.remove_files(self.record)
            _unlink_file(self.marker)
        release_lock()
        recorded = list(self.record.get("made_folders", []))
        for folder in recorded + [f for f in self.made if f not in recorded]:
            with contextlib.suppress(OSError):
                Path(folder).rmdir()

    def has_finished_blocks(self) -> bool:
        entries, _polygons = self.manifest()
        return any((self.path / "blocks" / f"{block_id}.tif").exists() for block_id in entries)


def check_not_inside(job_dir: Path, inputs: Sequence[Path], outputs: dict[str, Optional[Path]]) -> None:
    """Outputs never inside the job folder (its cleanup would delete them), inputs never inside it either."""
    root = job_dir.resolve()
    for label, path in outputs.items():
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved == root or root in resolved.parents:
            raise OutputError(
                f"{label} {path} is inside the job folder {job_dir}, which is removed when the job ends. "
                "Write it elsewhere, or choose another job folder (--job-dir)."
            )
    for path in inputs:
        if root in Path(path).resolve().parents:
            raise InputError(
                f"The input {Path(path).name} is inside the job folder {job_dir}. Keep the tiles out of the job "
                "folder: choose another job folder (--job-dir)."
            )
