"""Atomic file writes: write a uniquely named hidden sibling, then rename it over the target.

The sibling is in the same folder (same filesystem, so os.replace is atomic) and is removed on any
failure, so a full disk or a crash never leaves a half-written file at the target path.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Union

from .errors import OutputError


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique temporary path beside `path` (concurrent writers never collide)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}")


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
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomically(path: Union[str, Path], text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_torch_atomically(obj: object, path: Union[str, Path]) -> Path:
    """torch.save through a file object: torch names the archive's records after a file *name*, so
    saving to the random temporary name would make identical weights hash differently."""
    import torch

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return write_atomically(path, save)
