"""Scoring building polygons the SpaceNet way, plus pixel IoU/Dice, TP/FP/FN layers and a JSON report.

Object level (SpaceNet / solaris): predictions are taken in turn (highest score first when scores are
given, else in input order); each takes the still-unmatched ground-truth polygon with which its IoU is
highest, and is a true positive when that IoU is >= 0.5. Matching is one to one; unmatched ground truth
polygons are false negatives.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from ..common.callbacks import CancelCallback, ProgressCallback, check_canceled
from ..common.errors import InputError
from ..common.geometry import crs_is_metric
from ..io.atomic import write_text_atomically
from ..io.paths import split_layer
from ..io.raster_io import use_bundled_proj_data

CONFIDENCE_FIELDS = ("score", "conf", "confidence")
# The layers of the TP/FP/FN GeoPackage (written into an existing file, its other layers are kept).
LAYER_NAMES = ("true_positives", "false_positives", "false_negatives")


@dataclass
class ObjectScores:
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_iou: float  # mean IoU of the true-positive matches

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Match:
    """A true positive: prediction index, ground-truth index, their IoU."""

    pred: int
    gt: int
    iou: float


def scores_from_counts(tp: int, fp: int, fn: int, iou_sum: float = 0.0) -> ObjectScores:
    """Precision/recall/F1 from counts (e.g. summed over many tiles); empty cases score 0."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ObjectScores(tp, fp, fn, precision, recall, f1, iou_sum / tp if tp else 0.0)


def score_polygons(
    predicted: Sequence[BaseGeometry],
    ground_truth: Sequence[BaseGeometry],
    iou_threshold: float = 0.5,
    pred_scores: Optional[Sequence[float]] = None,
) -> tuple[ObjectScores, list[Match]]:
    """SpaceNet object scores of predicted vs ground-truth polygons in one planar CRS.

    Each prediction takes its best still-unmatched ground truth (IoU >= iou_threshold, one to one).
    Empty or zero-area predictions are false positives, as in solaris.
    """
    gt = np.asarray([g if g is not None else shapely.Polygon() for g in ground_truth], dtype=object)
    gt_valid = shapely.make_valid(gt) if len(gt) else gt
    tree = shapely.STRtree(gt_valid)
    gt_area = shapely.area(gt_valid) if len(gt) else np.zeros(0)
    unmatched = np.ones(len(gt), bool)
    order = range(len(predicted))
    if pred_scores is not None:
        order = sorted(order, key=lambda i: -float(pred_scores[i]))
    matches: list[Match] = []
    fp = 0
    for i in order:
        pred = predicted[i]
        if pred is None or pred.is_empty or pred.area <= 0:
            fp += 1
            continue
        if not pred.is_valid:
            pred = shapely.make_valid(pred)
        candidates = tree.query(pred, predicate="intersects")
        candidates = candidates[unmatched[candidates]]
        if len(candidates) == 0:
            fp += 1
            continue
        inter = shapely.area(shapely.intersection(pred, gt_valid[candidates]))
        union = pred.area + gt_area[candidates] - inter
        ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold:
            unmatched[candidates[best]] = False
            matches.append(Match(int(i), int(candidates[best]), float(ious[best])))
        else:
            fp += 1
    tp = len(matches)
    scores = scores_from_counts(tp, fp, int(unmatched.sum()), sum(m.iou for m in matches))
    return scores, matches


def pixel_scores(pred_mask: np.ndarray, gt_mask: np.ndarray, valid: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Pixel IoU and Dice of two boolean masks (only where valid). Both empty scores 1.0."""
    pred = np.asarray(pred_mask, bool)
    gt = np.asarray(gt_mask, bool)
    if pred.shape != gt.shape:
        raise InputError(f"Prediction mask {pred.shape} and ground truth mask {gt.shape} differ in shape.")
    if valid is not None:
        valid = np.asarray(valid, bool)
        pred, gt = pred & valid, gt & valid
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    union = tp + fp + fn
    return {
        "iou": tp / union if union else 1.0,
        "dice": 2 * tp / (2 * tp + fp + fn) if union else 1.0,
        "tp_pixels": tp,
        "fp_pixels": fp,
        "fn_pixels": fn,
    }


def area_scores(predicted: Sequence[BaseGeometry], ground_truth: Sequence[BaseGeometry]) -> dict[str, Any]:
    """Pixel IoU/Dice at infinite resolution: areas of the unions of the two polygon sets."""
    pred = shapely.union_all([g for g in predicted if g is not None]) if predicted else shapely.Polygon()
    gt = shapely.union_all([g for g in ground_truth if g is not None]) if ground_truth else shapely.Polygon()
    inter = pred.intersection(gt).area
    pred_area, gt_area = pred.area, gt.area
    union = pred_area + gt_area - inter
    return {
        "iou": inter / union if union > 0 else 1.0,
        "dice": 2 * inter / (pred_area + gt_area) if pred_area + gt_area > 0 else 1.0,
        "tp_m2": inter,
        "fp_m2": pred_area - inter,
        "fn_m2": gt_area - inter,
    }


# --------------------------------------------------------------------------- files


@dataclass
class EvaluationResult:
    scores: ObjectScores
    pixel: dict[str, Any]
    pixel_method: str  # "raster" (on the raster's grid) or "area" (exact polygon areas)
    crs_wkt: str
    n_predicted: int
    n_ground_truth: int
    matches: list[Match]
    predicted: list[BaseGeometry]
    ground_truth: list[BaseGeometry]
    layers_path: Optional[Path] = None
    report_path: Optional[Path] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def fp_indices(self) -> list[int]:
        """Indices into `predicted` that matched no ground truth (false positives), in input order."""
        matched = {m.pred for m in self.matches}
        return [i for i in range(len(self.predicted)) if i not in matched]

    @property
    def fn_indices(self) -> list[int]:
        """Indices into `ground_truth` that no prediction matched (false negatives), in input order."""
        matched = {m.gt for m in self.matches}
        return [i for i in range(len(self.ground_truth)) if i not in matched]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores.to_dict(),
            "pixel": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.pixel.items()},
            "pixel_method": self.pixel_method,
            "n_predicted": self.n_predicted,
            "n_ground_truth": self.n_ground_truth,
            "layers_path": str(self.layers_path) if self.layers_path else None,
            "report_path": str(self.report_path) if self.report_path else None,
            "warnings": self.warnings,
        }

    def summary_lines(self) -> list[str]:
        s = self.scores
        lines = [
            f"Predicted: {self.n_predicted}  Ground truth: {self.n_ground_truth}",
            f"TP {s.tp}  FP {s.fp}  FN {s.fn}",
            f"Precision {s.precision:.4f}  Recall {s.recall:.4f}  F1 {s.f1:.4f}  mean IoU of matches {s.mean_iou:.4f}",
            f"Pixel IoU {self.pixel['iou']:.4f}  Dice {self.pixel['dice']:.4f} ({self.pixel_method})",
        ]
        if self.layers_path:
            lines.append(f"TP/FP/FN layers: {self.layers_path}")
        if self.report_path:
            lines.append(f"Report: {self.report_path}")
        return lines + [f"Warning: {w}" for w in self.warnings]


def _wgs84_centre(path: Path, layer: Optional[str] = None) -> tuple[float, float]:
    from ..io.vector_io import read_polygons

    data = read_polygons(path, target_crs_wkt="EPSG:4326", layer=layer)
    if not data.geometries:
        return 0.0, 0.0
    minx, miny, maxx, maxy = shapely.total_bounds(np.asarray(data.geometries, dtype=object))
    return (minx + maxx) / 2.0, (miny + maxy) / 2.0


def choose_metric_crs(
    *crs_candidates: Optional[str], fallback_path: Optional[Path] = None, fallback_layer: Optional[str] = None
) -> str:
    """The first metric projected CRS among the candidates, else the UTM zone of the data's centre.

    Web Mercator counts as non-metric: its metres stretch with latitude.
    """
    from rasterio.crs import CRS

    for wkt in crs_candidates:
        if crs_is_metric(wkt):
            return CRS.from_user_input(wkt).to_wkt()
    from ..common.geometry import utm_crs_for

    lon, lat = _wgs84_centre(fallback_path, fallback_layer) if fallback_path is not None else (0.0, 0.0)
    return CRS.from_user_input(utm_crs_for(lon, lat)).to_wkt()


def _layer_crs(path: Path, layer: Optional[str] = None) -> Optional[str]:
    from ..io.vector_io import _ogr

    ogr, _ = _ogr()
    try:
        dataset = ogr.Open(str(path))
    except RuntimeError:
        return None
    if dataset is None or dataset.GetLayerCount() == 0:
        return None
    ogr_layer = dataset.GetLayerByName(layer) if layer else dataset.GetLayer(0)
    if ogr_layer is None:
        return None
    srs = ogr_layer.GetSpatialRef()
    return srs.ExportToWkt() if srs is not None else None


def _raster_footprint(raster_path: Path, crs_wkt: str) -> BaseGeometry:
    """The raster's extent as a polygon in crs_wkt (edges densified so they bend correctly)."""
    import rasterio
    from rasterio.warp import transform_geom

    if not Path(raster_path).exists():
        raise InputError(f"Raster not found: {raster_path}. Check the path.")
    try:
        with rasterio.open(raster_path) as dataset:
            box, crs = shapely.box(*dataset.bounds), dataset.crs
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"Cannot open raster {raster_path}: {exc}.") from None
    if crs is None:
        return box
    dense = box.segmentize(max(box.length / 400, 1e-9))
    return shapely.geometry.shape(transform_geom(crs, crs_wkt, shapely.geometry.mapping(dense)))


def _clip(geoms: list[BaseGeometry], region: BaseGeometry) -> list[BaseGeometry]:
    from ..common.geometry import largest_polygon as _polygonal

    shapely.prepare(region)
    out = []
    for geom in geoms:
        if not shapely.intersects(region, geom):
            continue
        if not shapely.contains(region, geom):
            geom = _polygonal(shapely.intersection(geom, region))
        if geom is not None and not geom.is_empty and geom.area > 0:
            out.append(geom)
    return out


def evaluate_files(
    predicted_path: Path | str,
    ground_truth_path: Path | str,
    aoi_path: Optional[Path | str] = None,
    min_area_m2: float = 0.0,
    out_layers: Optional[Path | str] = None,
    report_json: Optional[Path | str] = None,
    raster_path: Optional[Path | str] = None,
    progress: Optional[ProgressCallback] = None,
    is_canceled: Optional[CancelCallback] = None,
    iou_threshold: float = 0.5,
) -> EvaluationResult:
    """Score a predicted polygon file against ground truth; optionally write TP/FP/FN layers and a JSON report.

    Both are reprojected to one metric CRS. Both are clipped to the AOI and/or the raster's extent (so
    ground truth outside the scored region is not counted as missed), then polygons smaller than
    min_area_m2 are dropped from both, as SpaceNet does. Pixel scores use the raster's grid when
    raster_path is given, else exact polygon areas.
    """
    use_bundled_proj_data()  # every CRS below comes from rasterio's PROJ (see raster_io)
    report = progress or (lambda _f: None)
    _check_evaluation_job(
        predicted_path, ground_truth_path, aoi_path, raster_path, out_layers, report_json, iou_threshold, min_area_m2
    )
    check_canceled(is_canceled)
    pair = _read_pair(predicted_path, ground_truth_path)
    report(0.2)
    region = _scored_region(aoi_path, raster_path, pair.metric_wkt)
    pair.restrict(region, min_area_m2)
    if not pair.ground_truth:
        pair.warnings.append(
            "No ground-truth polygons in the scored region: check the AOI, the raster extent and the CRSs."
        )
    check_canceled(is_canceled)
    report(0.4)
    result = _score_pair(pair, region, raster_path, iou_threshold, is_canceled, report)
    if out_layers is not None:
        _write_layers(result, Path(out_layers))
    if report_json is not None:
        settings = {
            "predicted": predicted_path,
            "ground_truth": ground_truth_path,
            "aoi": aoi_path,
            "raster": raster_path,
            "min_area_m2": min_area_m2,
            "iou_threshold": iou_threshold,
        }
        _write_report(result, Path(report_json), settings)
    report(1.0)
    return result


def _score_pair(
    pair: _Pair,
    region: Optional[BaseGeometry],
    raster_path: Optional[Path | str],
    iou_threshold: float,
    is_canceled: Optional[CancelCallback],
    report: ProgressCallback,
) -> EvaluationResult:
    """Object scores, then pixel scores on the raster's grid (or exact areas without a raster)."""
    scores, matches = score_polygons(pair.predicted, pair.ground_truth, iou_threshold, pred_scores=pair.pred_scores)
    check_canceled(is_canceled)
    report(0.7)
    if raster_path is not None:
        pixel = _raster_pixel_scores(Path(raster_path), pair.predicted, pair.ground_truth, pair.metric_wkt, region)
        method = "raster"
    else:
        pixel, method = area_scores(pair.predicted, pair.ground_truth), "area"
    return EvaluationResult(
        scores,
        pixel,
        method,
        pair.metric_wkt,
        len(pair.predicted),
        len(pair.ground_truth),
        matches,
        pair.predicted,
        pair.ground_truth,
        warnings=pair.warnings,
    )


def _check_evaluation_job(
    predicted, ground_truth, aoi, raster, out_layers, report_json, iou_threshold, min_area_m2
) -> None:
    """Every check that needs no geometry, before any work."""
    from ..io.paths import check_folder_writable, check_outputs, file_part

    # An output that is an input (or the other output) would destroy the user's data.
    check_outputs(
        {"predicted": predicted, "ground truth": ground_truth, "AOI": aoi, "raster": raster},
        {"the TP/FP/FN layers": out_layers, "the JSON report": report_json},
    )
    for label, output in (("the TP/FP/FN layers", out_layers), ("the JSON report", report_json)):
        if output is not None:
            check_folder_writable(split_layer(output)[0], label)
    if iou_threshold <= 0 or iou_threshold > 1:
        raise InputError(f"The IoU threshold must be in (0, 1], not {iou_threshold}.")
    if min_area_m2 < 0:
        raise InputError(f"The minimum area must be >= 0 m², not {min_area_m2}.")
    for path in (predicted, ground_truth):
        on_disk = file_part(split_layer(path)[0])
        if on_disk is not None and not str(path).startswith("/vsi") and not on_disk.exists():
            raise InputError(f"Vector file not found: {on_disk}. Check the path.")


@dataclass
class _Pair:
    """Predictions and ground truth in one metric CRS, with the predictions' confidences."""

    predicted: list[BaseGeometry]
    ground_truth: list[BaseGeometry]
    pred_scores: Optional[list[float]]
    metric_wkt: str
    warnings: list[str]

    def restrict(self, region: Optional[BaseGeometry], min_area_m2: float) -> None:
        """Clip both to the region, then drop polygons under min_area_m2 from both (SpaceNet)."""
        if region is not None:
            keep = [i for i, g in enumerate(self.predicted) if shapely.intersects(region, g)]
            self.pred_scores = [self.pred_scores[i] for i in keep] if self.pred_scores is not None else None
            self.predicted = _clip([self.predicted[i] for i in keep], region)
            if len(self.predicted) != len(keep):
                self.pred_scores = None  # clipping dropped slivers; order is kept, scores no longer align
            self.ground_truth = _clip(self.ground_truth, region)
        if min_area_m2 > 0:
            keep = [i for i, g in enumerate(self.predicted) if g.area >= min_area_m2]
            self.pred_scores = [self.pred_scores[i] for i in keep] if self.pred_scores is not None else None
            self.predicted = [self.predicted[i] for i in keep]
            self.ground_truth = [g for g in self.ground_truth if g.area >= min_area_m2]


def _read_pair(predicted_path: Path | str, ground_truth_path: Path | str) -> _Pair:
    from ..io.vector_io import read_polygons

    (pred_file, pred_layer), (gt_file, gt_layer) = split_layer(predicted_path), split_layer(ground_truth_path)
    metric_wkt = choose_metric_crs(
        _layer_crs(pred_file, pred_layer), _layer_crs(gt_file, gt_layer), fallback_path=gt_file, fallback_layer=gt_layer
    )
    pred_data = read_polygons(pred_file, target_crs_wkt=metric_wkt, layer=pred_layer)
    gt_data = read_polygons(gt_file, target_crs_wkt=metric_wkt, layer=gt_layer)
    for data, path, role in ((pred_data, predicted_path, "predicted"), (gt_data, ground_truth_path, "ground-truth")):
        if data.n_dropped and not data.geometries:
            raise InputError(
                f"The {role} layer {path} has no polygons: its {data.n_dropped} feature(s) are points, lines or "
                "empty. Evaluation compares building outlines; choose a polygon layer."
            )
    warnings = pred_data.warnings + gt_data.warnings
    if pred_data.n_fixed or gt_data.n_fixed:
        warnings.append(f"Repaired invalid geometries: {pred_data.n_fixed} predicted, {gt_data.n_fixed} ground truth.")
    pred_scores = None
    for name in CONFIDENCE_FIELDS:  # like solaris: most confident predictions pick their match first
        if pred_data.attributes and all(isinstance(a.get(name), (int, float)) for a in pred_data.attributes):
            pred_scores = [float(a[name]) for a in pred_data.attributes]
            break
    return _Pair(list(pred_data.geometries), list(gt_data.geometries), pred_scores, metric_wkt, warnings)


def _scored_region(aoi_path, raster_path, metric_wkt: str) -> Optional[BaseGeometry]:
    """The AOI, the raster's footprint, or both intersected; None scores everything."""
    from ..io.vector_io import read_polygons

    region: Optional[BaseGeometry] = None
    if aoi_path is not None:
        aoi_file, aoi_layer = split_layer(aoi_path)
        aoi = read_polygons(aoi_file, target_crs_wkt=metric_wkt, layer=aoi_layer)
        if not aoi.geometries:
            raise InputError(f"The area of interest {aoi_path} has no polygons. Draw the AOI as a polygon layer.")
        region = shapely.union_all(aoi.geometries)
    if raster_path is not None:
        footprint = _raster_footprint(Path(raster_path), metric_wkt)
        region = footprint if region is None else region.intersection(footprint)
    return region


def _write_layers(result: EvaluationResult, path: Path) -> None:
    from ..io.vector_io import write_polygons

    result.layers_path = path
    predicted, ground_truth, matches = result.predicted, result.ground_truth, result.matches
    fp_idx, fn_idx = result.fp_indices, result.fn_indices
    write_polygons(
        path,
        [predicted[m.pred] for m in matches],
        [{"pred_index": m.pred, "gt_index": m.gt, "iou": round(m.iou, 4)} for m in matches],
        result.crs_wkt,
        fields={"pred_index": int, "gt_index": int, "iou": float},
        layer_name=LAYER_NAMES[0],
        extra_layers=[
            (LAYER_NAMES[1], [predicted[i] for i in fp_idx], [{"pred_index": i} for i in fp_idx]),
            (LAYER_NAMES[2], [ground_truth[i] for i in fn_idx], [{"gt_index": i} for i in fn_idx]),
        ],
    )


def _write_report(result: EvaluationResult, path: Path, settings: dict[str, Any]) -> None:
    result.report_path = path
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()},
        "metric_crs": result.crs_wkt,
        **result.to_dict(),
    }
    for key in ("predicted", "ground_truth", "aoi", "raster"):
        report[key] = str(report[key]) if report[key] else None
    write_text_atomically(path, json.dumps(report, indent=2, default=str) + "\n")


def _raster_pixel_scores(
    raster_path: Path,
    predicted: list[BaseGeometry],
    ground_truth: list[BaseGeometry],
    metric_wkt: str,
    region: Optional[BaseGeometry],
) -> dict[str, Any]:
    """Burn both polygon sets on the raster's grid (in its CRS) and compare the masks inside the region."""
    import rasterio
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom

    with rasterio.open(raster_path) as dataset:
        shape, transform, crs = (dataset.height, dataset.width), dataset.transform, dataset.crs
    if shape[0] * shape[1] > 400_000_000:
        raise InputError(f"{raster_path.name} is too large for pixel scores on its grid; omit the raster to use areas.")

    def burn(geoms: list[BaseGeometry]) -> np.ndarray:
        if not geoms:
            return np.zeros(shape, bool)
        mapped = [shapely.geometry.mapping(g) for g in geoms]
        if crs is not None:
            mapped = transform_geom(metric_wkt, crs, mapped)
        return rasterize(mapped, out_shape=shape, transform=transform, fill=0, default_value=1, dtype="uint8") > 0

    valid = burn([region]) if region is not None else None
    return pixel_scores(burn(predicted), burn(ground_truth), valid)
