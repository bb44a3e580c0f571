"""The work of a batch, as it runs in a worker (or in this process): one block's probabilities, one mosaic's
polygons. Each returns a plain dict with the size and sha256 of what it wrote, for the job's manifest."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional, Union

from ..common.callbacks import CancelCallback
from ..common.errors import CanceledError, FootprintError, OutputError
from ..io.atomic import remove_quietly, temporary_sibling
from . import mosaic as mosaic_mod
from .jobdir import file_digest
from .model_cache import cached_model, prepared_once

_BLOCK_LOCK = threading.Lock()


def _peak_rss_mb() -> float:
    """This process's peak resident memory (0 where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _predict_block(spec: dict[str, Any], block: mosaic_mod.Block, window_vrt: Path, is_canceled) -> Any:
    from ..engine.inference import predict_raster
    from ..engine.options import InferenceOptions
    from ..engine.scaling import ScalingStats
    from . import distributed as dist

    card, model = cached_model(spec["card_path"])
    options = InferenceOptions(**spec["inference"])
    if options.device in ("auto", "cuda") and dist.PINNED_DEVICE:
        options.device = dist.PINNED_DEVICE
    mosaic_mod.write_window_vrt(spec["mosaic_vrt"], block.window, window_vrt)
    # The mosaic's statistics, not the block's: per-block scaling would make seams between blocks.
    stats = ScalingStats(**spec["stats"])
    # One block at a time per process: blocks share the prepared network, which an out-of-memory
    # fall-back moves to the CPU in place, and predict_raster sets torch's process-wide thread count.
    with _BLOCK_LOCK:
        return predict_raster(
            window_vrt,
            card,
            Path(spec["out_path"]),
            options,
            is_canceled=is_canceled,
            scaling_stats=stats,
            prepared_model=prepared_once(model, options.device),
        )


def run_block(spec: dict[str, Any], is_canceled: Optional[CancelCallback] = None) -> dict[str, Any]:
    """Run the model over one block and write its probability GeoTIFF; returns its status and digest.

    Never raises for a bad block: a read error (corrupt tile) or a user error comes back as status
    "failed" with the message, so one bad tile never stops the other blocks. Cancel still raises.
    """
    started = time.perf_counter()
    block = mosaic_mod.Block(**spec["block"])
    out_path = Path(spec["out_path"])
    base = {"block_id": block.block_id, "mosaic": block.mosaic, "megapixels": block.megapixels, "pid": os.getpid()}
    # A re-run of a block whose result was lost with its worker: this job wrote the file (the job removes
    # every unverified block file before its blocks are submitted).
    if out_path.exists():
        return {**base, "status": "done", "seconds": 0.0, "warnings": [], "digest": file_digest(out_path)}
    window_vrt = out_path.with_name(f".{out_path.stem}.{os.getpid()}.window.vrt")
    try:
        result = _predict_block(spec, block, window_vrt, is_canceled)
        return {
            **base,
            "status": "done",
            "seconds": time.perf_counter() - started,
            "warnings": list(result.warnings),
            "device": result.device,
            "precision": result.precision,
            "peak_rss_mb": _peak_rss_mb(),
            "digest": file_digest(out_path),
        }
    except CanceledError:
        raise
    except FootprintError as exc:
        return {**base, "status": "failed", "error": str(exc), "seconds": time.perf_counter() - started}
    except Exception as exc:  # noqa: BLE001 - GDAL read errors of corrupt tiles surface as many types
        return {
            **base,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "seconds": time.perf_counter() - started,
        }
    finally:
        remove_quietly(window_vrt, window_vrt.with_name(window_vrt.name + ".tmp"))


def _tile_boxes(mosaic: mosaic_mod.Mosaic) -> tuple[list[str], list[Any]]:
    """Names and footprints of the files a mosaic reads (a VRT input: the files it reads)."""
    import shapely

    names, boxes = [], []
    for tile in mosaic.tiles:
        described = []
        for source in tile.sources if tile.is_vrt else []:
            with contextlib.suppress(Exception):
                described.append(mosaic_mod.describe_tile(source))
        for item in described or [tile]:
            names.append(item.name)
            boxes.append(shapely.box(*item.bounds))
    return names, boxes


def _assign_tiles(mosaic: mosaic_mod.Mosaic, result: Any) -> None:
    """The `tile` of a building: the input tile holding its representative point."""
    import shapely

    if not result.geometries:
        return
    names, boxes = _tile_boxes(mosaic)
    tree = shapely.STRtree(boxes)
    points = shapely.point_on_surface(result.geometries)
    hit_geom, hit_box = tree.query(points, predicate="intersects")
    owner: dict[int, int] = {}
    for g, b in zip(hit_geom.tolist(), hit_box.tolist()):
        owner.setdefault(g, b)
    for k, attrs in enumerate(result.attributes):
        name = names[owner.get(k, 0)]
        attrs["source"] = name
        attrs["tile"] = Path(name).stem


def polygonize_mosaic(spec: dict[str, Any]) -> dict[str, Any]:
    """Polygonize one mosaic from its finished blocks; write its layer in the job folder (and its COG)."""
    from ..vectors.polygons import PolygonOptions, polygonize_raster, write_buildings

    started = time.perf_counter()
    mosaic = mosaic_mod.Mosaic(
        **{**spec["mosaic"], "tiles": [mosaic_mod.TileInfo(**t) for t in spec["mosaic"]["tiles"]]}
    )
    blocks = [mosaic_mod.Block(**b) for b in spec["blocks"]]
    block_paths = {bid: Path(p) for bid, p in spec["block_paths"].items()}
    cores_vrt = Path(spec["cores_vrt"])
    mosaic_mod.write_cores_vrt(cores_vrt, mosaic, blocks, block_paths)
    result = polygonize_raster(cores_vrt, PolygonOptions(**spec["polygon"]), source=mosaic.name, model=spec["model"])
    _assign_tiles(mosaic, result)
    polygons_path = Path(spec["polygons_path"])
    remove_quietly(polygons_path)  # an earlier, unverified layer of this job
    write_buildings(result, polygons_path)
    probability_path = None
    if spec.get("probability_path"):
        probability_path = Path(spec["probability_path"])
        write_cog(cores_vrt, probability_path)
    return {
        "mosaic": mosaic.name,
        "n_buildings": len(result.geometries),
        "warnings": result.warnings,
        "seconds": time.perf_counter() - started,
        "probability_path": str(probability_path) if probability_path else None,
        "digest": file_digest(polygons_path),
        "probability_digest": file_digest(probability_path) if probability_path else None,
    }


def polygonize_safely(spec: dict[str, Any]) -> dict[str, Any]:
    """polygonize_mosaic, with a failure returned as status "failed" (and its reason) instead of raised."""
    try:
        return {**polygonize_mosaic(spec), "status": "done"}
    except CanceledError:
        raise
    except FootprintError as exc:
        return {"mosaic": spec["name"], "status": "failed", "error": str(exc), "warnings": []}
    except Exception as exc:  # noqa: BLE001 - GDAL and OGR errors surface as many types
        return {"mosaic": spec["name"], "status": "failed", "error": f"{type(exc).__name__}: {exc}", "warnings": []}


def write_cog(source: Union[str, Path], out_path: Union[str, Path]) -> Path:
    """A Cloud-Optimized GeoTIFF copy of a probability raster, written atomically."""
    import rasterio
    import rasterio.shutil

    from ..io import raster_io

    out_path = Path(out_path)
    tmp = temporary_sibling(out_path)
    try:
        with raster_io.gdal_env(), rasterio.open(source) as src:
            rasterio.shutil.copy(
                src,
                tmp,
                driver="COG",
                COMPRESS="DEFLATE",
                PREDICTOR="2",
                BIGTIFF="IF_SAFER",
                OVERVIEW_RESAMPLING="AVERAGE",
            )
        os.replace(tmp, out_path)
    except Exception as exc:  # noqa: BLE001 - GDAL write errors (full disk, permissions)
        raise OutputError(f"Cannot write the probability raster {out_path} ({exc}). Check free disk space.") from None
    finally:
        remove_quietly(tmp)
    return out_path
