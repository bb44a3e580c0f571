"""The output-path guard: no output may overwrite an input or another output.

Every front end (CLI, Processing, GUI, batch) calls ``check_outputs`` with all of a job's inputs and
outputs *before any work*, so a typo such as ``--probability in.tif`` is refused in a second instead
of destroying the user's raster after an hour of inference.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Mapping, Optional, Union

from ..common.errors import OutputError

PathLike = Union[str, Path]


def file_part(path: PathLike) -> Optional[Path]:
    """The file on disk behind a path GDAL or QGIS accepts: 'x.gpkg|layername=a' -> x.gpkg,
    '/vsizip/a.zip/b.shp' -> a.zip; None for things that are not local files (URLs, 'memory:')."""
    text = str(path).split("|")[0].strip()
    if not text or text.startswith(("memory:", "http://", "https://", "postgres", "PG:", "/vsicurl")):
        return None
    if text.startswith("/vsi"):
        parts = Path(text).parts  # ('/', 'vsizip', 'folder', 'a.zip', 'b.shp')
        for index in range(len(parts), 2, -1):
            candidate = Path("/", *parts[2:index])
            if candidate.is_file():
                return candidate
        return None
    return Path(text).expanduser()


def gdal_path(path: PathLike) -> str:
    """The string to give GDAL for `path`. pathlib turns '/vsizip//abs/a.zip/x' into '/vsizip/abs/a.zip/x',
    which GDAL reads as relative to the working folder: put the absolute path's slash back."""
    text = str(path)
    if text.startswith("/vsi") and not text.startswith(("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsimem")):
        prefix, _, rest = text[1:].partition("/")
        if rest and not rest.startswith("/"):
            archive = file_part(text)
            if archive is not None and archive.is_absolute() and not Path(rest.split("/")[0]).exists():
                return f"/{prefix}//{rest}"
    return text


def resolved(path: PathLike) -> Optional[str]:
    """Absolute path with symlinks and '..' resolved (None for non-file sources)."""
    part = file_part(path)
    return None if part is None else os.path.realpath(part)


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when two paths name the same file (hard links and symlinks included)."""
    ra, rb = resolved(a), resolved(b)
    if ra is None or rb is None:
        return False
    if ra == rb:
        return True
    try:
        return os.path.samefile(ra, rb)
    except OSError:
        return False


def check_outputs(
    inputs: Mapping[str, Optional[PathLike]], outputs: Mapping[str, Optional[PathLike]]
) -> dict[str, Path]:
    """Refuse outputs that are an input, another output or an existing folder; returns label -> path.

    Labels are the user's words for each path (e.g. "--probability", "Building probability"), so the
    message says which setting to change.
    """
    given_inputs = {label: p for label, p in inputs.items() if p not in (None, "")}
    checked: dict[str, Path] = {}
    for label, path in outputs.items():
        if path in (None, ""):
            continue
        part = file_part(path)
        if part is None:
            continue
        if part.is_dir():
            raise OutputError(f"{label}: {part} is an existing folder. Give a file name inside it instead.")
        for input_label, input_path in given_inputs.items():
            if same_file(part, input_path):
                raise OutputError(
                    f"{label} ({part}) is the input {input_label}: writing it would destroy your data. "
                    "Choose another output file name."
                )
        for other_label, other in checked.items():
            if same_file(part, other):
                raise OutputError(
                    f"{label} and {other_label} are the same file ({part}): one would overwrite the other. "
                    "Give each output its own file name."
                )
        checked[label] = part
    return checked


def check_folder_writable(path: PathLike, label: Optional[str] = "Output") -> Path:
    """Raise OutputError now (not after the whole job) when the folder of `path` is missing or read-only.

    `label` names the setting in the message ("--out: the folder ..."); None gives a plain sentence.
    """

    def refused(problem: str) -> OutputError:
        return OutputError(f"{label}: {problem}" if label else problem[:1].upper() + problem[1:])

    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise refused(f"the folder {folder} does not exist. Create it or choose another output path.")
    # Only a real write tells: permission bits miss read-only mounts, ACLs and /proc-like filesystems.
    probe = folder / f".footprint_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise refused(f"cannot write to the folder {folder} ({exc.strerror}). Choose a writable folder.") from None
    return path


def free_bytes(path: PathLike) -> Optional[int]:
    """Free space on the filesystem holding `path` (its folder), None when unknown."""
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None
