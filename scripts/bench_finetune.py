#!/usr/bin/env python3
"""Fine-tuning for the user's own area, on held-out ground: object F1 before, and after budgets of minutes.

    .venv/bin/python scripts/bench_finetune.py [--areas joplin massachusetts atlanta kampala]
        [--budgets 2 5 10] [--cells 25 50 100] [--threads 1] [--base footprint_eo_lite0]

Areas (../shared/data): Joplin (tile_337-9136 labelled, scored on the other three tiles), Massachusetts
(22978945_15 to 23429155_15), Atlanta pan (west half to east half), Kampala z20 (fAIr's train tiles to
its val tiles). Every fine-tune uses the defaults (no --epochs: the epochs fill the budget) and is
scored through the user path: detect_buildings, then evaluate_files (object F1 at IoU 0.5).
--cells N compares labelling the cells `suggest_cells` picks with labelling random cells, until N
buildings are labelled (the cells are the AOI, so an empty reviewed cell teaches "no building").
Prints one table; figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


@dataclass
class Area:
    """Training rasters (with their AOIs) and the rasters scored, all with one labels file."""

    name: str
    labels: Path
    train: list[Path]
    score: list[Path]
    aois: list[Path | None] = field(default_factory=list)


def _crop_half(raster: Path, out: Path, west: bool) -> Path:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(raster) as source:
        half = source.width // 2
        window = Window(0 if west else half, 0, half if west else source.width - half, source.height)
        profile = source.profile | {
            "width": int(window.width),
            "height": int(window.height),
            "transform": source.window_transform(window),
        }
        with rasterio.open(out, "w", **profile) as target:
            target.write(source.read(window=window))
    return out


def _kampala_split(folder: Path) -> tuple[list[Path], list[Path]]:
    import rasterio

    train, held_out = [], []
    for tile in sorted(folder.glob("OAM-*-20.tif")):
        with rasterio.open(tile) as dataset:
            (train if dataset.tags().get("FAIR_SPLIT") == "train" else held_out).append(tile)
    return train, held_out


def build_areas(data: Path, scratch: Path) -> dict[str, Area]:
    eo = data / "eo"
    joplin = sorted((eo / "xview2_joplin_pre" / "tiles").glob("tile_*.tif"))
    first = [t for t in joplin if t.stem == "tile_337-9136"]
    mass = eo / "massachusetts_mnih" / "tiles"
    atlanta = eo / "spacenet4_atlanta_pan" / "tiles" / "sample_geotiff.tif"
    k_train, k_held = _kampala_split(eo / "hotosm_kampala" / "tiles")
    areas = {
        "joplin": Area(
            "joplin", eo / "xview2_joplin_pre" / "labels.geojson", first, [t for t in joplin if t not in first]
        ),
        "massachusetts": Area(
            "massachusetts",
            eo / "massachusetts_mnih" / "labels.geojson",
            [mass / "22978945_15.tif"],
            [mass / "23429155_15.tif"],
        ),
        "kampala": Area("kampala", eo / "hotosm_kampala" / "labels.geojson", k_train, k_held),
    }
    if atlanta.exists():
        west = _crop_half(atlanta, scratch / "atlanta_west.tif", west=True)
        east = _crop_half(atlanta, scratch / "atlanta_east.tif", west=False)
        areas["atlanta"] = Area("atlanta", eo / "spacenet4_atlanta_pan" / "labels.geojson", [west], [east])
    return areas


def score_model(card, area: Area, scratch: Path) -> dict[str, float]:
    """Object F1 (IoU 0.5) through detect + evaluate on each scored raster; pooled counts and the mean F1."""
    from footprint_plugin.core.engine.inference import InferenceOptions
    from footprint_plugin.core.engine.pipeline import detect_buildings
    from footprint_plugin.core.vectors.evaluate import evaluate_files, scores_from_counts

    f1s, tp, fp, fn = [], 0, 0, 0
    for raster in area.score:
        predicted = scratch / f"{card.name}_{raster.stem}.gpkg"
        detect_buildings(raster, predicted, card, inference_options=InferenceOptions(tta=False))
        scores = evaluate_files(predicted, area.labels, raster_path=raster).scores
        f1s.append(scores.f1)
        tp, fp, fn = tp + scores.tp, fp + scores.fp, fn + scores.fn
    return {"mean_f1": sum(f1s) / len(f1s), "pooled_f1": scores_from_counts(tp, fp, fn).f1, "per_raster": f1s}


# The recipe a plain `finetune` uses (cli/train.py defaults); --recipe KEY=VALUE overrides one for a study.
RECIPE = {"lr": 3e-4, "freeze_encoder_epochs": 2, "chip_size": 256, "empty_chip_ratio": 0.1, "augmentation": "standard"}


def fine_tune(base: str, area: Area, minutes: float, out_dir: Path, name: str, aois=None, recipe=None):
    from footprint_plugin.core.learning.training import TrainingConfig, TrainingPair, train_model

    aois = aois or [None] * len(area.train)
    pairs = [TrainingPair(r, area.labels, aoi, name=area.name) for r, aoi in zip(area.train, aois)]
    config = TrainingConfig(
        out_name=name, base_model=base, epochs=None, max_minutes=minutes, out_dir=out_dir, device="cpu",
        resume=False, labels_source=f"{area.name} labels", **(recipe or RECIPE),
    )  # fmt: skip
    started = time.monotonic()
    result = train_model(pairs, config)
    return result, time.monotonic() - started


def labelled_cells(area: Area, base_card, count: int, strategy: str, scratch: Path, cell_m: float = 60.0):
    """AOI files (one per training raster) holding cells picked by `strategy` until `count` buildings are inside."""
    import numpy as np
    import shapely

    from footprint_plugin.core.engine.pipeline import detect_buildings
    from footprint_plugin.core.io import raster_io
    from footprint_plugin.core.io.vector_io import read_polygons, write_polygons
    from footprint_plugin.core.learning.suggest import cell_grid, rank_cells

    ranked = []  # (order key, raster index, cell geometry, buildings inside)
    rng = np.random.default_rng(0)
    for index, raster in enumerate(area.train):
        probability = scratch / f"base_probability_{index}.tif"
        if not probability.exists():
            detect_buildings(raster, None, base_card, probability_path=probability)
        with raster_io.opened(raster) as dataset:
            crs_wkt = dataset.crs.to_wkt()
        grid = cell_grid(probability, cell_m, base_card.threshold, image_path=raster)
        cells = rank_cells(grid, max_cells=grid.rows * grid.cols)
        centroids = shapely.STRtree([g.centroid for g in read_polygons(area.labels, target_crs_wkt=crs_wkt).geometries])
        for cell in cells:
            inside = len(centroids.query(cell.geometry, predicate="contains"))
            key = cell.rank if strategy == "suggested" else float(rng.random())
            ranked.append((key, index, cell.geometry, inside, crs_wkt))
    if strategy == "suggested":  # best ranks of every raster first
        ranked.sort(key=lambda item: (item[0], item[1]))
    else:
        ranked.sort(key=lambda item: item[0])
    chosen: dict[int, list] = {}
    total = 0
    for _key, index, geometry, inside, crs_wkt in ranked:
        if total >= count:
            break
        chosen.setdefault(index, []).append((geometry, crs_wkt))
        total += inside
    aois = []
    for index in range(len(area.train)):
        cells = chosen.get(index)
        if not cells:
            aois.append(None)
            continue
        path = scratch / f"{strategy}_{count}_{index}.gpkg"
        write_polygons(path, [g for g, _ in cells], [{}] * len(cells), cells[0][1])
        aois.append(path)
    keep = [i for i, aoi in enumerate(aois) if aoi is not None]
    subset = Area(area.name, area.labels, [area.train[i] for i in keep], area.score)
    return subset, [aois[i] for i in keep], total


def signal_study(base_card, areas: dict[str, Area], names: list[str], scratch: Path) -> list[tuple]:
    """Which per-cell uncertainty signal tracks where the base model errs? Spearman rank correlation, over the
    60 m cells of every raster, between each signal and the cell's errors (false positives + misses)."""
    import numpy as np
    import shapely

    from footprint_plugin.core.engine.inference import InferenceOptions
    from footprint_plugin.core.engine.pipeline import detect_buildings
    from footprint_plugin.core.io import raster_io
    from footprint_plugin.core.io.vector_io import read_polygons
    from footprint_plugin.core.learning.labels import clip_ground_truth
    from footprint_plugin.core.learning.suggest import _block_view, cell_grid
    from footprint_plugin.core.vectors.evaluate import score_polygons

    def ranks(values):
        return np.argsort(np.argsort(values)).astype(float)

    rows = []
    for name in names:
        area = areas[name]
        signals: dict[str, list] = {"near-threshold (tent)": [], "share in 0.3-0.7": [], "entropy": []}
        errors = []
        for raster in area.train + area.score:
            probability, predicted = scratch / f"sig_{raster.stem}.tif", scratch / f"sig_{raster.stem}.gpkg"
            detect_buildings(raster, predicted, base_card, probability, InferenceOptions(tta=False))
            grid = cell_grid(probability, 60.0, base_card.threshold)
            values, valid, _heads = raster_io.read_probability(probability)
            p = np.where(valid, values[0], np.nan)
            blocks = _block_view(p, grid.cell_px, grid.rows, grid.cols)
            with np.errstate(invalid="ignore", divide="ignore"):
                band = np.nanmean((blocks >= 0.3) & (blocks <= 0.7), axis=-1)
                q = np.clip(blocks, 1e-6, 1 - 1e-6)
                entropy = np.nanmean(-(q * np.log(q) + (1 - q) * np.log(1 - q)), axis=-1)
            with raster_io.opened(probability) as dataset:
                crs_wkt, transform = dataset.crs.to_wkt(), dataset.transform
            truth = clip_ground_truth(read_polygons(area.labels, target_crs_wkt=crs_wkt).geometries, transform, valid)
            pred = list(read_polygons(predicted, target_crs_wkt=crs_wkt).geometries) if predicted.exists() else []
            _scores, matches = score_polygons(pred, truth)
            wrong = [g for i, g in enumerate(pred) if i not in {m.pred for m in matches}]
            wrong += [g for i, g in enumerate(truth) if i not in {m.gt for m in matches}]
            tree = shapely.STRtree([g.centroid for g in wrong]) if wrong else None
            for row in range(grid.rows):
                for col in range(grid.cols):
                    if np.isnan(grid.uncertainty[row, col]):
                        continue
                    count = len(tree.query(grid.box(row, col), predicate="contains")) if tree is not None else 0
                    errors.append(count)
                    signals["near-threshold (tent)"].append(grid.uncertainty[row, col])
                    signals["share in 0.3-0.7"].append(band[row, col])
                    signals["entropy"].append(entropy[row, col])
        error_ranks = ranks(np.asarray(errors))
        for signal, values in signals.items():
            rho = float(np.corrcoef(ranks(np.asarray(values)), error_ranks)[0, 1])
            rows.append((name, signal, len(errors), rho))
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--areas", nargs="+", default=["joplin", "massachusetts", "atlanta", "kampala"])
    parser.add_argument("--budgets", nargs="*", type=float, default=[2.0, 5.0, 10.0], help="minutes")
    parser.add_argument("--cells", nargs="*", type=int, default=[25, 50, 100], help="labelled buildings")
    parser.add_argument("--cells-budget", type=float, default=5.0, help="minutes per cells-vs-random fine-tune")
    parser.add_argument("--base", default="footprint_eo_lite0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--recipe", nargs="*", default=[], help="KEY=VALUE overrides of the fine-tuning recipe")
    parser.add_argument("--signals", action="store_true", help="only the uncertainty-signal study (no training)")
    # make bench passes the inference benchmark's options to every script; ignore the ones not ours.
    args, _unknown = parser.parse_known_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from footprint_plugin.core.zoo.modelcard import find_model

    base = find_model(args.base)
    recipe = dict(RECIPE)
    for item in args.recipe:
        key, _sep, value = item.partition("=")
        recipe[key] = type(RECIPE.get(key, ""))(value) if key in RECIPE else float(value)
    print(f"{platform.processor() or platform.machine()}, {args.threads} torch thread(s); base {base.display_name}")
    print(f"recipe: {recipe}")
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        areas = build_areas(args.data, scratch)
        if args.signals:
            print(f"\n{'area':<14} {'signal':<24} {'cells':>6} {'Spearman vs errors':>19}")
            for area, signal, cells, rho in signal_study(base, areas, args.areas, scratch):
                print(f"{area:<14} {signal:<24} {cells:>6} {rho:>19.3f}")
            return 0
        for name in args.areas:
            area = areas[name]
            before = score_model(base, area, scratch)
            figures[name] = {"before": before}
            rows.append((name, "base", "-", before["mean_f1"], before["pooled_f1"], "-"))
            print(rows[-1], flush=True)
            for minutes in args.budgets:
                result, seconds = fine_tune(
                    args.base, area, minutes, scratch / "models", f"{name}_{minutes:g}min", recipe=recipe
                )
                after = score_model(find_model(str(result.card_path)), area, scratch)
                epochs = result.metrics["epochs_trained"]
                figures[name][f"{minutes:g}min"] = {**after, "seconds": seconds, "epochs": epochs}
                rows.append(
                    (
                        name,
                        f"{minutes:g} min",
                        f"{seconds:.0f} s/{epochs} ep",
                        after["mean_f1"],
                        after["pooled_f1"],
                        "-",
                    )
                )
                print(rows[-1], flush=True)
            for count in args.cells:
                for strategy in ("suggested", "random"):
                    subset, aois, labelled = labelled_cells(area, base, count, strategy, scratch)
                    model_name = f"{name}_{strategy}_{count}"
                    result, seconds = fine_tune(
                        args.base, subset, args.cells_budget, scratch / "models", model_name, aois
                    )
                    after = score_model(find_model(str(result.card_path)), subset, scratch)
                    figures[name][model_name] = {**after, "seconds": seconds, "labelled": labelled}
                    rows.append(
                        (name, f"{strategy} cells", f"{labelled} bldgs", after["mean_f1"], after["pooled_f1"], count)
                    )
                    print(rows[-1], flush=True)
    print(f"\n{'area':<14} {'run':<16} {'time / labels':<16} {'mean F1':>8} {'pooled F1':>10} {'target bldgs':>13}")
    for area, run, detail, mean_f1, pooled_f1, target in rows:
        print(f"{area:<14} {run:<16} {detail:<16} {mean_f1:>8.3f} {pooled_f1:>10.3f} {str(target):>13}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
