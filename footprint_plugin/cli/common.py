"""Shared command-line plumbing: progress bars, Ctrl-C/SIGTERM/SIGHUP as cancel, JSON summaries."""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any, Callable, Optional, TextIO


class Reporter:
    """Progress bar on stderr and a final summary (text, or one JSON line on stdout with --json)."""

    def __init__(self, json_mode: bool = False, stream: Optional[TextIO] = None) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stderr
        self._label = ""
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._canceled = False
        self._interactive = self.stream.isatty()
        self.stop_signal: Optional[int] = None

    def stage(self, label: str) -> None:
        """Start a new progress bar with a label."""
        self._finish_line()
        self._label = label
        self._start = time.monotonic()
        self.progress(0.0)

    def progress(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last_draw < (0.2 if self._interactive else 5.0):
            return
        self._last_draw = now
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(fraction * 30)
        elapsed = now - self._start
        bar = f"{self._label:<18} [{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}% {elapsed:6.1f}s"
        if self._interactive:
            self.stream.write("\r" + bar)
        else:
            self.stream.write(bar + "\n")
        self.stream.flush()

    def _finish_line(self) -> None:
        if self._interactive and self._label:
            self.stream.write("\n")
            self.stream.flush()

    def info(self, message: str) -> None:
        self._finish_line()
        self._label = ""
        self.stream.write(message + "\n")
        self.stream.flush()

    def is_canceled(self) -> bool:
        return self._canceled

    def cancel(self) -> None:
        self._canceled = True

    def summary(self, data: dict[str, Any], text_lines: list[str]) -> None:
        """Print the human summary (stderr in JSON mode) and, with --json, the JSON as the last stdout line."""
        self._finish_line()
        self._label = ""
        if self.json_mode:
            for line in text_lines:
                self.stream.write(line + "\n")
            sys.stdout.write(json.dumps(data, default=str) + "\n")
            sys.stdout.flush()
        else:
            for line in text_lines:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def error_json(self, message: str, status: int) -> None:
        """With --json, the last line of stdout: {"error": message, "exit": status}."""
        text = message.split(": ", 1)[1] if message.startswith(("Error: ", "Canceled: ")) else message
        sys.stdout.write(json.dumps({"error": text, "exit": status}) + "\n")
        sys.stdout.flush()


# Signals that mean "stop": Ctrl-C, a killed job or a timeout (SIGTERM), a closed terminal (SIGHUP).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(BaseException):
    """Raised by a second stop signal: leave at once (cleanup handlers still run)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def install_stop_handlers(reporter: Reporter) -> Callable[[], None]:
    """The first stop signal cancels the job cleanly (outputs removed, earlier files kept); a second one
    stops at once. Returns a function that restores the previous handlers."""

    def on_signal(signum: int, _frame: Any) -> None:
        if reporter.is_canceled():
            raise Stopped(signum)
        reporter.stop_signal = signum
        if signum == signal.SIGINT:
            reporter.info("Canceling... (press Ctrl-C again to abort at once)")
        else:
            reporter.info(f"Received {signal.Signals(signum).name}: canceling and removing partial outputs...")
        reporter.cancel()

    previous = {}
    for signum in STOP_SIGNALS:
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except (ValueError, OSError):  # not the main thread
            continue

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def exit_status_for_stop(reporter: Reporter) -> int:
    """128 + signal number, as shells report a process stopped by a signal (130 for Ctrl-C)."""
    return 128 + int(getattr(reporter, "stop_signal", None) or signal.SIGINT)
