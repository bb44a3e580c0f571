"""Lock files: one batch run at a time on a job folder or an output.

A lock is a small JSON file (process id, host, start time, a random token) created atomically: it is
written under a temporary name and hard-linked into place, which fails when the lock exists, so two runs
can never both hold it. A lock left by a run that died on this host (its process id no longer runs) is
taken over with a note; one held by a live process, or by another host (which this one cannot check),
stops the second run with a message saying whose it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

from ..common.errors import OutputError
from ..io.atomic import _process_alive, remove_quietly, temporary_sibling

LOCK_KIND = "footprint_plugin batch lock"


def _create_exclusive(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists (False then); never a half-written lock."""
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links (FAT, some network shares)
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
            return True
    finally:
        remove_quietly(tmp)


def _read_lock(path: Path) -> Optional[dict]:
    """The lock's record, None when the file is not one of our locks; raises FileNotFoundError when gone."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != LOCK_KIND:
        return None
    return record


class JobLock:
    """The lock at `path`, guarding `what` (said in messages: "the job folder X", "the output Y")."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        host = socket.gethostname()
        data = {"kind": LOCK_KIND, "pid": os.getpid(), "host": host, "started": started, "token": self.token}
        return json.dumps(data)

    def acquire(self, info: Callable[[str], None]) -> None:
        """Take the lock or raise OutputError naming the run that holds it."""
        for _attempt in range(3):
            if _create_exclusive(self.path, self._record()):
                self.held = True
                return
            try:
                holder = _read_lock(self.path)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if holder is None:
                raise OutputError(
                    f"{self.path} exists but is not a lock file of this plugin, so {self.what} may be in use. "
                    f"If no batch job is running on it, delete {self.path.name} and run again."
                )
            pid, host = int(holder.get("pid", 0)), str(holder.get("host", "?"))
            if host == socket.gethostname() and not _process_alive(pid):
                info(
                    f"Note: took over the lock of an earlier batch run on {self.what} (process {pid}, started "
                    f"{holder.get('started', '?')}), which no longer runs."
                )
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            raise OutputError(
                f"Another batch run (process {pid} on {host}, started {holder.get('started', '?')}) is using "
                f"{self.what}. Wait for it to finish, or choose another folder or output. If that run is gone "
                f"(its machine crashed), delete {self.path} and run again."
            )
        raise OutputError(f"Could not lock {self.what}: other runs keep taking it. Try again in a moment.")

    def release(self) -> None:
        """Remove the lock if it is still ours (never another run's)."""
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(FileNotFoundError):
            holder = _read_lock(self.path)
            if holder is not None and holder.get("token") == self.token:
                with contextlib.suppress(OSError):
                    self.path.unlink()
