"""`models`: list the bundled and user models with their cards; import or delete user models."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_common_arguments
from .common import Reporter


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, import or delete models",
        description="List models and their cards; import a card + weights into the user model folder, or delete a user model.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="print every card field")
    parser.add_argument("--import", dest="import_card", type=Path, metavar="CARD.json", help="import this model card")
    parser.add_argument(
        "--weights", type=Path, metavar="WEIGHTS.pt", help="with --import: the weights file (default: the card's)"
    )
    parser.add_argument("--delete", metavar="NAME", help="delete this user model (card, weights, training reports)")
    add_common_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, reporter: Reporter) -> int:
    from ..core.common.errors import InputError
    from ..core.zoo.modelcard import delete_model, find_model, import_model, scan_models, user_model_dir

    if args.weights and not args.import_card:
        raise InputError("--weights goes with --import CARD.json.")
    if args.import_card:
        card = import_model(args.import_card, args.weights)
        reporter.info(f"Imported '{card.name}' into {user_model_dir()}.")
    if args.delete:
        card = find_model(args.delete)
        removed = delete_model(card, only_in=user_model_dir())
        reporter.info(f"Deleted the user model '{card.name}' ({len(removed)} files, training reports included).")
    cards, problems = scan_models()
    lines = []
    for card in cards:
        where = "bundled" if card.bundled else "user"
        metrics = card.metrics if isinstance(card.metrics, dict) else {}
        held_out = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
        f1 = metrics.get("f1", held_out.get("f1"))
        lines.append(
            f"{card.name:<28} v{card.version:<6} {where:<7} {card.sensor:<3} {card.architecture:<20} "
            f"bands={','.join(card.band_roles)} gsd={card.gsd_m:g} m"
            + (f" held-out F1={f1:.3f}" if isinstance(f1, float) else "")
        )
        if args.verbose:
            lines += [f"    {key}: {value}" for key, value in card.to_dict().items()]
    if not cards:
        lines.append("No models installed.")
    lines += [f"Warning: {problem}" for problem in problems]
    lines.append(f"User model folder: {user_model_dir()}")
    models = [dict(card.to_dict(), bundled=card.bundled, path=str(card.path)) for card in cards]
    reporter.summary({"models": models, "warnings": problems}, lines)
    return 0
