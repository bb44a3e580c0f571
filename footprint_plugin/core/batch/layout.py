"""Where a batch job's files go, what each worker is handed, which mosaics are ready for polygons, and the
merge of the mosaics' layers into the output."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from ..common.callbacks import CancelCallback, check_canceled
from ..zoo.modelcard import ModelCard
from . import mosaic as mosaic_mod
from .jobdir import JobFolder, matches
from .planning import Plan


class JobLayout:
    """The job's file names (blocks, mosaic layers, COGs) and the specs of its block and polygon tasks."""

    def __init__(self, job_dir: Path, card: ModelCard, polygon_options: Any, probability_dir: Optional[Path]) -> None:
        self.job_dir, self.card = job_dir, card
        self.polygon_options, self.probability_dir = polygon_options, probability_dir
        self.polygons_fp = ""  # set once the job's settings are known

    def block_path(self, block: mosaic_mod.Block) -> Path:
        return self.job_dir / "blocks" / f"{block.block_id}.tif"

    def polygon_path(self, name: str) -> Path:
        return self.job_dir / "polygons" / f"{name}.{self.polygons_fp}.gpkg"

    def cog_path(self, name: str) -> Optional[Path]:
        return self.probability_dir / f"{name}_probability.tif" if self.probability_dir else None

    def block_spec(self, plan: Plan, block: mosaic_mod.Block, inference: dict[str, Any]) -> dict[str, Any]:
        return {
            "block_id": block.block_id,
            "block": block.to_dict(),
            "out_path": str(self.block_path(block)),
            "mosaic_vrt": plan.mosaic(block.mosaic).vrt_path,
            "card_path": str(self.card.path),
            "inference": inference,
            "stats": plan.stats[block.mosaic],
        }

    def polygon_spec(self, plan: Plan, mosaic: mosaic_mod.Mosaic) -> dict[str, Any]:
        blocks = plan.blocks[mosaic.name]
        cog = self.cog_path(mosaic.name)
        return {
            "name": mosaic.name,
            "mosaic": dataclasses.asdict(mosaic),
            "blocks": [b.to_dict() for b in blocks],
            "block_paths": {b.block_id: str(self.block_path(b)) for b in blocks},
            "cores_vrt": str(self.job_dir / "mosaics" / f"{mosaic.name}_probability.vrt"),
            "polygon": dataclasses.asdict(self.polygon_options),
            "model": self.card.display_name,
            "polygons_path": str(self.polygon_path(mosaic.name)),
            "probability_path": str(cog) if cog else None,
        }

    def verified_polygons(self, plan: Plan, folder: JobFolder, resumed: set[str]) -> set[str]:
        """Mosaics whose layer (and COG) an earlier run of this job finished and that still match the manifest."""
        _blocks, entries = folder.manifest()
        fresh = set()
        for mosaic in plan.mosaics:
            entry = entries.get(mosaic.name) or {}
            if entry.get("fp") != self.polygons_fp:
                continue
            if any(b.block_id not in resumed for b in plan.blocks[mosaic.name]):
                continue
            cog = self.cog_path(mosaic.name)
            if matches(self.polygon_path(mosaic.name), entry.get("digest")) and (
                cog is None or matches(cog, entry.get("probability_digest"))
            ):
                fresh.add(mosaic.name)
        return fresh


class PolygonQueue:
    """Called with the block results so far: the polygon specs of the mosaics that just became ready.

    A mosaic is ready when all its blocks are done; one with a failed block is never polygonized (the job
    then writes nothing), and one whose layer is already verified is not made again."""

    def __init__(self, plan: Plan, layout: JobLayout, resumed: set[str], fresh: set[str]) -> None:
        self.plan, self.layout, self.fresh = plan, layout, fresh
        self.settled = {m.name: 0 for m in plan.mosaics}
        for block in plan.all_blocks():
            self.settled[block.mosaic] += block.block_id in resumed
        self.broken: set[str] = set()
        self.submitted: set[str] = set()
        self.accounted = 0

    def __call__(self, results: list[dict]) -> list[dict[str, Any]]:
        for result in results[self.accounted :]:
            self.settled[result["mosaic"]] += 1
            if result.get("status") != "done":
                self.broken.add(result["mosaic"])
        self.accounted = len(results)
        ready = []
        for mosaic in self.plan.mosaics:
            name = mosaic.name
            if name in self.submitted or self.settled[name] < len(self.plan.blocks[name]):
                continue
            self.submitted.add(name)
            if name not in self.broken and name not in self.fresh:
                ready.append(self.layout.polygon_spec(self.plan, mosaic))
        return ready


def merge_layers(
    plan: Plan, layout: JobLayout, out_path: Optional[Path], is_canceled: Optional[CancelCallback]
) -> tuple[list[Any], list[dict[str, Any]], Optional[str], list[Path]]:
    """Every mosaic's layer, in the first mosaic's CRS; written to the output (atomically) when there is one."""
    from ..common.vocabulary import BATCH_FIELDS, BUILDING_FIELDS, BUILDINGS_LAYER
    from ..io.vector_io import read_polygons, write_polygons

    geometries, attributes, cogs = [], [], []
    crs_wkt = plan.mosaics[0].crs_wkt
    for mosaic in plan.mosaics:
        check_canceled(is_canceled)
        data = read_polygons(layout.polygon_path(mosaic.name), target_crs_wkt=crs_wkt)
        # GeoPackage layers hold MultiPolygons; a building is one polygon, as detect returns it.
        geometries += [
            g.geoms[0] if g.geom_type == "MultiPolygon" and len(g.geoms) == 1 else g for g in data.geometries
        ]
        attributes += data.attributes
        cog = layout.cog_path(mosaic.name)
        if cog is not None and cog.exists():
            cogs.append(cog)
    for attrs in attributes:
        attrs.pop("id", None)  # the layer's own key numbers the buildings (core/common/vocabulary.py)
        attrs.pop("fid", None)
        attrs["regularized"] = bool(attrs.get("regularized"))
    if out_path is not None:
        check_canceled(is_canceled)
        fields = {**BUILDING_FIELDS, **BATCH_FIELDS}
        write_polygons(out_path, geometries, attributes, crs_wkt, fields=fields, layer_name=BUILDINGS_LAYER)
    return geometries, attributes, crs_wkt, cogs
