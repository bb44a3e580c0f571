"""`models`: list the bundled and user models with their cards."""

from __future__ import annotations

import argparse

from . import add_common_arguments
from .common import Reporter


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list bundled and user models", description="List models and their cards.")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every card field")
    add_common_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from ..core.modelcard import list_models, user_model_dir

    cards = list_models()
    lines = []
    for card in cards:
        where = "bundled" if card.bundled else "user"
        metrics = card.metrics if isinstance(card.metrics, dict) else {}
        held_out = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
        f1 = metrics.get("f1", held_out.get("f1"))
        lines.append(
            f"{card.name:<28} v{card.version:<6} {where:<7} {card.sensor:<3} {card.architecture:<20} "
            f"bands={','.join(card.band_roles)} gsd={card.gsd_m:g} m" + (f" held-out F1={f1:.3f}" if isinstance(f1, float) else "")
        )
        if args.verbose:
            lines += [f"    {key}: {value}" for key, value in card.to_dict().items()]
    if not cards:
        lines.append("No models installed.")
    lines.append(f"User model folder: {user_model_dir()}")
    reporter.summary({"models": [dict(card.to_dict(), bundled=card.bundled, path=str(card.path)) for card in cards]}, lines)
    return 0
