"""Import the engine's heavy modules (torch: seconds) once in a background thread at start-up.

Without this the first click on Detect buildings froze QGIS while torch was imported for the device
check. The thread only imports and asks which device "auto" means; nothing touches Qt from it.
"""

from __future__ import annotations

import threading
from typing import Optional

_LOCK = threading.Lock()
_THREAD: Optional[threading.Thread] = None
_DEVICE_TEXT: Optional[str] = None


def device_summary() -> tuple[bool, str]:
    """(a GPU is usable, text naming it or saying why none is used). Imports torch: call it from the
    warm-up thread, or once the warm-up is done."""
    try:
        from ..core.engine.device import select_device

        choice = select_device("auto")
    except Exception as exc:  # noqa: BLE001 - the dialog must open even when torch is broken
        return False, f"CPU (device check failed: {exc})"
    text = choice.name + (f" ({choice.note})" if choice.note else "")
    return choice.device != "cpu", text


def _work() -> None:
    global _DEVICE_TEXT
    text = "CPU"
    try:
        from .. import deps

        if not deps.missing_dependencies():
            import torch  # noqa: F401 - the point is to import it now, off the GUI thread

            from ..core.engine import inference, pipeline  # noqa: F401

            text = device_summary()[1]
        else:
            text = "CPU (the engine's packages are not installed yet)"
    except Exception as exc:  # noqa: BLE001 - a broken torch must not break QGIS start-up
        text = f"CPU (device check failed: {exc})"
    _DEVICE_TEXT = text


def start() -> None:
    """Start the warm-up once (idempotent, returns at once)."""
    global _THREAD
    with _LOCK:
        if _THREAD is None:
            _THREAD = threading.Thread(target=_work, name="footprint-warmup", daemon=True)
            _THREAD.start()


def device_text() -> Optional[str]:
    """What the device check found, or None while the warm-up still runs (or never started)."""
    return _DEVICE_TEXT


def wait(timeout_s: float = 120.0) -> Optional[str]:
    """Block until the warm-up is done (tests, scripts); returns device_text()."""
    start()
    if _THREAD is not None:
        _THREAD.join(timeout_s)
    return _DEVICE_TEXT
