"""The output-path guard: no output may overwrite an input or another output.

Every front end (CLI, Processing, GUI, batch) calls ``check_outputs`` with all of a job's inputs and
outputs *before any work*, so a typo such as ``--probability in.tif`` is refused in a second instead
of destroying the user's raster after an hour of inference.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from ..common.errors import OutputError

PathLike = Union[str, Path]


# Prefixes of GDAL names that are not files on this disk (network, memory, databases).
_NOT_FILES = ("memory:", "http://", "https://", "postgres", "PG:", "/vsicurl")
# Keys of a connection string (PostGIS, QGIS data source URIs) whose values are secrets.
_SECRET_RE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|authcfg|secret|token|api[_-]?key)\s*[=:]\s*)(?P<value>'(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s&;|)'\",]+)",
    re.IGNORECASE,
)
_URL_PASSWORD_RE = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?P<value>[^@\s/]+)(?=@)", re.IGNORECASE)


def scrub_credentials(text: object) -> str:
    """`text` with every password (and token, authcfg) of a connection string or URL replaced by ***.

    Every message and log line that may quote a destination (PostGIS URIs, web-map URLs) goes through this,
    so a failure never shows or stores the user's password.
    """
    scrubbed = _SECRET_RE.sub(lambda m: m.group("key") + "***", str(text))
    return _URL_PASSWORD_RE.sub(lambda m: m.group("scheme") + "***", scrubbed)


def is_gdal_path(path: PathLike) -> bool:
    """Names GDAL opens that are not plain files: /vsizip/..., /vsicurl/..., URLs, GPKG:file.gpkg:table."""
    text = str(path)
    return text.startswith(("/vsi", "http://", "https://")) or (":" in text[2:] and text.split(":")[0].isupper())


def split_layer(path: PathLike) -> tuple[Path, Optional[str]]:
    """'file.gpkg|layername=x' (as QGIS writes it) -> (file.gpkg, 'x'); plain paths -> (path, None)."""
    text = str(path)
    if "|" not in text:
        return Path(text), None
    file_text, *options = text.split("|")
    layer = None
    for option in options:
        key, _, value = option.partition("=")
        if key.strip().lower() == "layername":
            layer = value.strip() or None
    return Path(file_text.strip()), layer


def file_part(path: PathLike) -> Optional[Path]:
    """The file on disk behind a path GDAL or QGIS accepts: 'x.gpkg|layername=a' -> x.gpkg,
    '/vsizip/a.zip/b.shp' -> a.zip; None for things that are not local files (URLs, 'memory:')."""
    text = str(path).split("|")[0].strip()
    dbname = re.match(r"^ogr:dbname='((?:[^'\\]|\\.)*)'", text)  # QGIS's OGR destination: ogr:dbname='b.gpkg' table=...
    if dbname:
        text = dbname.group(1).replace("\\'", "'")
    if not text or text.startswith(_NOT_FILES):
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


# Vector formats that hold several layers: writing one layer keeps the others.
MULTI_LAYER_SUFFIXES = (".gpkg", ".sqlite")


def container_layers(path: PathLike) -> Optional[list[str]]:
    """The layer names of an existing GeoPackage/SQLite file, or None when GDAL cannot read it as one."""
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_READONLY)
    except RuntimeError:
        return None
    if dataset is None:
        return None
    return [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())]


def existing_output_problem(
    label: str, path: PathLike, layers: Sequence[str] = (), how_to_replace: str = "--overwrite"
) -> Optional[str]:
    """Why writing `path` would replace something that exists (a file, or a layer of that name), or None.

    A GeoPackage that exists is written into: only the named layers are added or replaced, the others
    are kept, so only a layer of the same name needs the explicit choice `how_to_replace`.
    """
    part = file_part(path)
    if part is None or not part.exists() or part.is_dir():
        return None
    if part.suffix.lower() in MULTI_LAYER_SUFFIXES and layers:
        present = container_layers(part)
        if present is None:
            return (
                f"{label}: {part} exists and is not a GeoPackage GDAL can read. Choose another file name, or give "
                f"{how_to_replace} to replace the file."
            )
        clashes = [name for name in layers if name.lower() in {p.lower() for p in present}]
        if not clashes:
            return None
        names = ", ".join(f"'{name}'" for name in clashes)
        return (
            f"{label}: {part} already has a layer {names}. Give {how_to_replace} to replace that layer "
            "(the file's other layers are kept), or choose another file name."
        )
    return f"{label}: {part} exists already. Give {how_to_replace} to replace it, or choose another file name."


def check_existing_outputs(
    outputs: Mapping[str, Optional[PathLike]],
    overwrite: bool,
    layers: Optional[Mapping[str, Sequence[str]]] = None,
    how_to_replace: str = "--overwrite",
) -> None:
    """Refuse, before any work, outputs that would replace an existing file or layer unless `overwrite`.

    `layers` gives, per output label, the layers it writes into a GeoPackage (other layers are always kept).
    Processing does not call this: QGIS's own destination widgets ask the user about existing files.
    """
    if overwrite:
        return
    for label, path in outputs.items():
        if path in (None, ""):
            continue
        problem = existing_output_problem(label, path, (layers or {}).get(label, ()), how_to_replace)
        if problem:
            raise OutputError(problem)


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
