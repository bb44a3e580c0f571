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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..core.common.errors import CanceledError, FootprintError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    reporter = Reporter(json_mode=getattr(args, "json", False))
    restore = install_stop_handlers(reporter)
    try:
        return int(args.run(args, reporter) or 0)
    except CanceledError as exc:
        reporter.info(f"Canceled: {exc}")
        return exit_status_for_stop(reporter)
    except FootprintError as exc:
        reporter.info(f"Error: {exc}")
        return 2
    except (KeyboardInterrupt, Stopped):
        reporter.info("Aborted at once; partial files, if any, are removed by the next run.")
        return exit_status_for_stop(reporter)
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
