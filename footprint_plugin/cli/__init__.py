"""Command line: `python -m footprint_plugin {detect,evaluate,models,train,finetune} ...`.

Each subcommand lives in its own module with `add_parser(subparsers)` and `run(args, reporter) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from .common import Reporter, Stopped, exit_status_for_stop, install_stop_handlers

SUBCOMMAND_MODULES = ("detect", "evaluate", "models", "train", "batch")


class UsageError(Exception):
    """A command line argparse refused (unknown option, missing value); its usage text is printed already."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line to main() (for --json) instead of exiting on its own."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m footprint_plugin",
        description="Detect, evaluate and train building-footprint models (headless engine of the QGIS plugin).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__name__):
                continue  # subcommand not implemented in this build
            raise
        module.add_parser(subparsers)
    return parser


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line of output")


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files (in a GeoPackage: only the layers written; the others are kept)",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand; every failure is one message (and, with --json, a last line {"error", "exit"})."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    reporter = Reporter(json_mode="--json" in argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(reporter, f"Error: {exc}", 2)
    if not getattr(args, "command", None):
        parser.print_help()
        return _fail(reporter, "Error: no command given (see the list above).", 2)
    reporter.json_mode = getattr(args, "json", False)
    restore = install_stop_handlers(reporter)
    try:
        return int(args.run(args, reporter) or 0)
    except BaseException as exc:  # noqa: BLE001 - every way out ends with one message (and one JSON line)
        return _fail(reporter, *_failure(exc, reporter))
    finally:
        restore()


def _failure(exc: BaseException, reporter: Reporter) -> tuple[str, int]:
    """(message, exit status) for a failed run: user errors and stops in words, anything else with its traceback."""
    from ..core.common.errors import CanceledError, FootprintError
    from ..core.io.paths import scrub_credentials

    if isinstance(exc, CanceledError):
        return f"Canceled: {exc}", exit_status_for_stop(reporter)
    if isinstance(exc, FootprintError):
        return f"Error: {scrub_credentials(exc)}", 2
    if isinstance(exc, (KeyboardInterrupt, Stopped)):
        return "Aborted at once; partial files, if any, are removed by the next run.", exit_status_for_stop(reporter)
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return f"Exited with status {code}.", code
    import traceback

    traceback.print_exc()  # a bug, not a user error: the traceback is what a report needs
    return f"Internal error ({type(exc).__name__}: {scrub_credentials(exc)}); please report it with the lines above.", 1


def _fail(reporter: Reporter, message: str, status: int) -> int:
    reporter.info(message)
    if reporter.json_mode and status:
        reporter.error_json(message, status)
    return status


if __name__ == "__main__":
    sys.exit(main())
