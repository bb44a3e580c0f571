"""GDAL write errors that rasterio logs instead of raising: collected, so a failed write stops a run at once.

GDAL writes cached blocks when it needs room, often during a later *read*, so a full disk does not make
the next write raise; rasterio only logs it. Without this, inference ran on to the end and libtiff printed
one line per block on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from pathlib import Path

_LOG_LOCK = threading.Lock()
_writers_listening = 0


def _quiet_libtiff() -> None:
    """Stop the libtiff that rasterio bundles from printing each failed block write on stderr itself.

    GDAL reports the same failure as an error (collected by WriteErrors), so nothing is lost; without
    this, a full disk prints one line per cached block.
    """
    import ctypes
    import glob

    import rasterio

    libs = Path(rasterio.__file__).resolve().parent.parent / "rasterio.libs"
    for library in glob.glob(str(libs / "libtiff*")):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(library).TIFFSetErrorHandler(None)


class WriteErrors(logging.Handler):
    """The GDAL errors rasterio logs, but does not raise, in the writing thread (dirty cache blocks are written
    during later reads), so the writer stops at the first one with a single OutputError."""

    def __init__(self) -> None:
        global _writers_listening
        super().__init__(logging.INFO)  # rasterio logs those errors at INFO
        self.thread = threading.get_ident()
        self.messages: list[str] = []
        self.logger = logging.getLogger("rasterio")
        with _LOG_LOCK:
            if _writers_listening == 0:
                _quiet_libtiff()
                _SAVED_LOGGER_STATE[:] = [(self.logger.level, self.logger.propagate)]
                # INFO must reach this handler, but not the application's handlers (passed on below at WARNING).
                self.logger.setLevel(logging.INFO)
                self.logger.propagate = False
            _writers_listening += 1
            self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"err_no=\d+, msg='(.*)'", record.getMessage())
        if record.thread == self.thread and (found or record.levelno >= logging.ERROR):
            self.messages.append(found.group(1) if found else record.getMessage())
        elif record.levelno >= logging.WARNING and self.logger.handlers and self.logger.handlers[0] is self:
            logging.getLogger().handle(record)  # what the application would have seen without us

    def detach(self) -> None:
        global _writers_listening
        with _LOG_LOCK:
            if self not in self.logger.handlers:
                return
            self.logger.removeHandler(self)
            _writers_listening -= 1
            if _writers_listening == 0 and _SAVED_LOGGER_STATE:
                level, propagate = _SAVED_LOGGER_STATE.pop()
                self.logger.setLevel(level)
                self.logger.propagate = propagate


_SAVED_LOGGER_STATE: list[tuple[int, bool]] = []
