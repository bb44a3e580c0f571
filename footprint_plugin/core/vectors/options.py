"""How probabilities become polygons: the options every path (button, toolbox, batch, CLI) passes to polygonize."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..common.errors import InputError
from ..common.vocabulary import DEFAULT_MIN_AREA_M2

SPLIT_MODES = ("auto", "watershed", "distance", "none")


@dataclass
class PolygonOptions:
    """How probabilities become polygons. Areas in m², lengths in metres.

    With boundary/contact heads (watershed), one roof gives one outline: seeds flood the region where the
    footprint is at least grow_threshold (default: threshold), the flooding stops at predicted edges, and
    neighbouring pieces merge again unless the heads say two roofs touch there (see merge_max_contact).
    """

    threshold: float = 0.5
    min_area_m2: float = DEFAULT_MIN_AREA_M2
    hole_area_m2: float = 10.0  # fill holes smaller than this
    simplify_m: Optional[float] = None  # None -> 0.75 pixel, enough to remove pixel staircases
    regularize: bool = False
    split: str = "auto"  # auto (watershed when boundary/contact heads exist, else none) | watershed | distance | none
    block_size: int = 2048  # streamed processing block (pixels); seam-crossing buildings are merged
    overlap: int = 128  # context read around each block for the watershed, pixels
    seed_threshold: float = 0.7  # watershed seeds: footprint at least this ...
    seed_max_edge: float = 0.4  # ... and boundary/contact below this
    min_seed_m2: float = 2.0  # smaller seeds would over-split buildings
    distance_seed_fraction: float = 0.5  # distance split: seed where distance >= this x the component's maximum
    grow_threshold: Optional[float] = None  # watershed: grow seeds down to this footprint (None: threshold; off)
    # Watershed: pieces rejoin when their shared border has a mean contact below merge_max_contact and a mean
    # boundary below merge_max_boundary (None: that head is not asked; merge_max_contact None: never rejoin).
    # Chosen on the validation blocks of every training area (scripts/study_polygons.py; README, Models).
    merge_max_contact: Optional[float] = 0.3
    merge_max_boundary: Optional[float] = 0.7

    def validate(self) -> None:
        problems = []
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"threshold must be between 0 and 1 (exclusive), not {self.threshold}")
        if self.grow_threshold is not None and not 0.0 < self.grow_threshold <= self.threshold:
            problems.append(f"grow_threshold must be in (0, threshold], not {self.grow_threshold}")
        for name in ("merge_max_contact", "merge_max_boundary"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                problems.append(f"{name} must be in (0, 1], not {value}")
        if self.min_area_m2 < 0 or self.hole_area_m2 < 0:
            problems.append("minimum area and hole area must be >= 0")
        if self.simplify_m is not None and self.simplify_m < 0:
            problems.append("simplify_m must be >= 0 or None (automatic)")
        if self.split not in SPLIT_MODES:
            problems.append(f"split must be one of {', '.join(SPLIT_MODES)}, not {self.split!r}")
        if self.block_size < 64 or self.overlap < 0:
            problems.append("block_size must be >= 64 pixels and overlap >= 0")
        if problems:
            raise InputError("Invalid polygon options: " + "; ".join(problems) + ".")
