"""Atomic file writes: write a uniquely named hidden sibling, then rename it over the target.

The sibling is in the same folder (same filesystem, so os.replace is atomic) and is removed on any
failure, so a full disk or a crash never leaves a half-written file at the target path. Its name
carries the writer's process id, so a later run can recognise and remove the partial files of a
process that was killed (SIGKILL, power loss) before it could clean up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterable, Union

from ..common.errors import OutputError

# .<stem>.<pid>.<8 hex>.partial<suffix>: the pid says whether its writer may still be running.
PARTIAL_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.partial(\..*)?$")
# Files GDAL writes beside a dataset; removed together with it.
SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk", "-wal", "-shm", "-journal")
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique temporary path beside `path` (concurrent writers never collide)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


def companions(path: Path) -> list[Path]:
    """The file plus the sidecars GDAL may write beside it (all parts of a Shapefile)."""
    path = Path(path)
    if path.suffix.lower() == ".shp":
        return [path.with_suffix(ext) for ext in SHAPEFILE_PARTS]
    return [path] + [path.with_name(path.name + ext) for ext in SIDECAR_SUFFIXES]


def remove_quietly(*paths: Union[str, Path, None]) -> None:
    """Delete files (or folders) and their GDAL sidecars, ignoring what is already gone.

    The one cleanup helper of the engine: used on every failure and cancel path.
    """
    for path in paths:
        if path is None:
            continue
        for candidate in companions(Path(path)):
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                candidate.unlink()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def remove_stale_partials(folders: Iterable[Union[str, Path, None]]) -> list[Path]:
    """Remove partial files left in `folders` by writers that no longer run; returns what was removed."""
    removed: list[Path] = []
    for folder in {Path(f) for f in folders if f is not None}:
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            match = PARTIAL_RE.match(entry.name)
            if match and not _process_alive(int(match.group("pid"))):
                remove_quietly(entry)
                removed.append(entry)
    return removed


def write_atomically(path: Union[str, Path], write: Callable[[Path], object]) -> Path:
    """Call write(tmp_path), then move tmp_path to path. OSError/RuntimeError become OutputError."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        raise OutputError(
            f"Could not write {path}: {exc}. Check that the folder is writable and has free space."
        ) from None
    finally:
        remove_quietly(tmp)
    return path


def write_text_atomically(path: Union[str, Path], text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def copy_atomically(source: Union[str, Path], path: Union[str, Path]) -> Path:
    """Copy a file's bytes to `path` atomically (no half-copied file on a full disk)."""
    return write_atomically(path, lambda tmp: shutil.copyfile(source, tmp))


def save_torch_atomically(obj: object, path: Union[str, Path]) -> Path:
    """torch.save through a file object: torch names the archive's records after a file *name*, so
    saving to the random temporary name would make identical weights hash differently."""
    import torch

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return write_atomically(path, save)
