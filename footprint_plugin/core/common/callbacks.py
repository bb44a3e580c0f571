"""Progress and cancel callbacks shared by every engine function."""

from __future__ import annotations

from typing import Callable, Optional

from .errors import CanceledError

ProgressCallback = Callable[[float], None]
CancelCallback = Callable[[], bool]


def no_progress(_fraction: float) -> None:
    """Default progress callback: ignore."""


def check_canceled(is_canceled: Optional[CancelCallback]) -> None:
    """Raise CanceledError if the caller asked to stop."""
    if is_canceled is not None and is_canceled():
        raise CanceledError()


def sub_progress(progress: Optional[ProgressCallback], start: float, end: float) -> ProgressCallback:
    """Map a sub-task's 0..1 progress onto [start, end] of the parent's progress."""
    if progress is None:
        return no_progress
    span = end - start

    def report(fraction: float) -> None:
        progress(start + span * min(max(fraction, 0.0), 1.0))

    return report
