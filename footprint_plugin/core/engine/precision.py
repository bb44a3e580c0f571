"""The reduced-precision gate: bf16 (CPU) or fp16 (CUDA) only where it gives this model's fp32 buildings.

Before the tile loop a few tiles spread over the raster run in fp32 and in the reduced precision. The
two outputs are compared as the user would: the buildings (instances as the polygon stage labels them,
matched one to one at IoU >= 0.5) and the footprint mask. Both must agree to at least 98 %; otherwise the
whole raster runs in fp32. Probability differences themselves do not matter: a building whose edge
pixel moves from 0.49 to 0.51 is still the same building.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

_LOG = logging.getLogger(__name__)

BF16_MIN_BUILDING_F1 = 0.98
BF16_MIN_MASK_IOU = 0.98
# Tiles compared (spread over the raster); their fp32 outputs are kept and used, so the check costs only
# their reduced-precision pass and the difference between the two speeds on them.
GATE_TILES = 4
MATCH_IOU = 0.5
# The union of the masks is floored at this share of the pixels: a nearly empty sample neither passes by
# luck nor fails on a handful of pixels.
MASK_UNION_FLOOR = 0.01
# What the user reads when the check keeps fp32 (the figures go to the log).
BF16_FALLBACK_WARNING = "Using full precision: the faster mode changed the result on this model."


@dataclass
class Agreement:
    """How closely a reduced-precision output matches fp32 on the sampled tiles."""

    mask_iou: float
    building_f1: float
    buildings: int  # fp32 buildings in the sample
    candidate_buildings: int
    matched: int

    @property
    def passes(self) -> bool:
        return self.mask_iou >= BF16_MIN_MASK_IOU and self.building_f1 >= BF16_MIN_BUILDING_F1

    def describe(self) -> str:
        return (
            f"{self.matched} of {self.buildings} buildings the same (F1 {self.building_f1:.3f}, at least "
            f"{BF16_MIN_BUILDING_F1:g} needed), footprint mask IoU {self.mask_iou:.3f} (at least {BF16_MIN_MASK_IOU:g})"
        )


def mask_iou(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> float:
    """IoU of the thresholded masks, the union floored at MASK_UNION_FLOOR of the pixels."""
    ref_mask, cand_mask = reference >= threshold, candidate >= threshold
    union = max(float(np.count_nonzero(ref_mask | cand_mask)), MASK_UNION_FLOOR * ref_mask.size)
    return 1.0 - float(np.count_nonzero(ref_mask != cand_mask)) / union


def bf16_agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float) -> tuple[float, float]:
    """(mask IoU over all heads, largest probability difference): the figures the benchmark prints."""
    return mask_iou(reference, candidate, threshold), float(np.abs(reference - candidate).max())


def matched_instances(reference: np.ndarray, candidate: np.ndarray, min_pixels: int) -> tuple[int, int, int]:
    """(matched, reference count, candidate count) of two int label images; instances of fewer than
    min_pixels are ignored (the polygon stage drops them), and a match needs IoU >= MATCH_IOU."""
    ref_sizes = np.bincount(reference.ravel())
    cand_sizes = np.bincount(candidate.ravel())
    ref_keep = np.flatnonzero(ref_sizes >= min_pixels)
    cand_keep = np.flatnonzero(cand_sizes >= min_pixels)
    ref_keep, cand_keep = ref_keep[ref_keep > 0], cand_keep[cand_keep > 0]
    both = (reference > 0) & (candidate > 0)
    pairs = reference[both].astype(np.int64) * (int(candidate.max()) + 1) + candidate[both]
    keys, overlap = np.unique(pairs, return_counts=True)
    ref_ids, cand_ids = np.divmod(keys, int(candidate.max()) + 1)
    union = ref_sizes[ref_ids] + cand_sizes[cand_ids] - overlap
    good = (overlap / np.maximum(union, 1) >= MATCH_IOU) & (ref_sizes[ref_ids] >= min_pixels)
    good &= cand_sizes[cand_ids] >= min_pixels
    return int(np.count_nonzero(good)), int(ref_keep.size), int(cand_keep.size)


def compare_outputs(
    references: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
    heads: Sequence[str],
    threshold: float,
    gsd_m: float,
    min_pixels: int,
) -> Agreement:
    """Agreement of per-tile (heads, h, w) probabilities, buildings labelled as the polygon stage does."""
    from ..vectors.instances import head_index, label_instances, resolve_split
    from ..vectors.options import PolygonOptions

    options = PolygonOptions(threshold=threshold)
    split = resolve_split(options.split, heads)
    footprint = head_index(heads, "footprint") or 0
    matched = n_ref = n_cand = 0
    ref_masks, cand_masks = [], []
    for reference, candidate in zip(references, candidates):
        labels_ref = label_instances(reference, None, heads, options, split, gsd_m)
        labels_cand = label_instances(candidate, None, heads, options, split, gsd_m)
        m, r, c = matched_instances(labels_ref, labels_cand, min_pixels)
        matched, n_ref, n_cand = matched + m, n_ref + r, n_cand + c
        ref_masks.append(reference[footprint])
        cand_masks.append(candidate[footprint])
    f1 = 1.0 if n_ref + n_cand == 0 else 2.0 * matched / (n_ref + n_cand)
    iou = mask_iou(np.stack(ref_masks), np.stack(cand_masks), threshold) if ref_masks else 1.0
    return Agreement(iou, f1, n_ref, n_cand, matched)


def _run_in_pairs(runner: Any, tiles: Sequence[np.ndarray], precision: str) -> list[np.ndarray]:
    """Two tiles per pass (the CPU batch size; on a GPU two tiles cannot run out of memory)."""
    outputs: list[np.ndarray] = []
    for start in range(0, len(tiles), 2):
        outputs.extend(runner.run(np.stack(tiles[start : start + 2]), precision))
    return outputs


def gate_reduced_precision(
    runner: Any,
    tiles: Sequence[np.ndarray],
    heads: Sequence[str],
    threshold: float,
    gsd_m: float,
    min_pixels: int,
    notes: list[str],
    margin: int = 0,
) -> tuple[list[np.ndarray], Optional[Agreement]]:
    """Run the sampled scaled tiles in fp32 and in the runner's reduced precision; keep the reduced one
    (runner.precision) only if the buildings agree, else set fp32. Returns the fp32 outputs and the figures.

    `margin`: tile border left out of the comparison, where the blend gives a tile little weight (the
    output there comes from its neighbours' interiors, which are compared)."""
    if not tiles:
        return [], None
    reduced = runner.precision
    references, candidates = _run_in_pairs(runner, tiles, "fp32"), _run_in_pairs(runner, tiles, reduced)
    inner = (slice(None), slice(margin, -margin or None), slice(margin, -margin or None))
    agreement = compare_outputs(
        [r[inner] for r in references], [c[inner] for c in candidates], heads, threshold, gsd_m, min_pixels
    )
    if agreement.passes:
        _LOG.info("%s gives fp32's buildings on %d sample tiles: %s.", reduced, len(tiles), agreement.describe())
        return references, agreement
    runner.precision = "fp32"
    _LOG.info("%s changed the result on %d sample tiles: %s; using fp32.", reduced, len(tiles), agreement.describe())
    notes.append(BF16_FALLBACK_WARNING)
    return references, agreement
