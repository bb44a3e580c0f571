"""The learning-rate schedule (one cycle) and the time budget that a run fills.

With a budget and no epoch count, the number of epochs comes from measured epoch times: each
epoch is followed by a fresh estimate of how many more fit before the deadline, leaving time for
threshold calibration and the final scoring. The one-cycle position is the larger of the step
fraction and the share of the training time used, so the rate anneals to its end by the deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

# Without an epoch count a budget run may take this many epochs at most (a guard, never reached in minutes).
BUDGET_EPOCH_CAP = 1000
# Share of the budget set aside for calibration, final scoring and writing until a validation pass was timed.
FINISH_SHARE_GUESS = 0.08


ONE_CYCLE_DIV_FACTOR = 25.0
ONE_CYCLE_FINAL_DIV_FACTOR = 1e4


def _annealing_cos(start: float, end: float, pct: float) -> float:
    """OneCycleLR's cosine annealing (anneal_strategy="cos") from start to end as pct goes from 0 to 1."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def one_cycle_lr(base_lr: float, fraction: float, warmup: float = 0.1) -> float:
    """The rate OneCycleLR(max_lr=base_lr, pct_start=warmup) gives at `fraction` of the run.

    OneCycleLR's own formula and default div_factor/final_div_factor (two phases, cosine up from
    base/25, then cosine down to base/250000), evaluated at a fraction rather than a step count:
    with a time budget the position is max(step fraction, elapsed / budget), which a step-counting
    scheduler cannot follow. Momentum is not cycled (OneCycleLR would also cycle AdamW's beta1).
    """
    fraction = min(max(fraction, 0.0), 1.0)
    initial_lr = base_lr / ONE_CYCLE_DIV_FACTOR
    if fraction < warmup:
        return _annealing_cos(initial_lr, base_lr, fraction / warmup)
    return _annealing_cos(base_lr, initial_lr / ONE_CYCLE_FINAL_DIV_FACTOR, (fraction - warmup) / (1.0 - warmup))


@dataclass
class TimeBudget:
    """When a run must stop: a deadline in seconds since its start, and epoch-time measurements.

    budget_s None: no deadline (epochs and patience alone end the run).
    """

    budget_s: Optional[float]
    epoch_seconds: list[float] = field(default_factory=list)
    finish_s: Optional[float] = None  # measured cost of calibration + final scoring (from validation passes)
    fit_started_s: float = 0.0  # elapsed seconds when the epoch loop began

    def finish_estimate(self) -> float:
        if self.budget_s is None:
            return 0.0
        if self.finish_s is None:
            return FINISH_SHARE_GUESS * self.budget_s
        return min(self.finish_s, 0.4 * self.budget_s)

    def training_deadline(self) -> Optional[float]:
        """Elapsed seconds at which the last epoch should end."""
        if self.budget_s is None:
            return None
        return self.budget_s - self.finish_estimate()

    def record_epoch(self, seconds: float, validation_seconds: float) -> None:
        self.epoch_seconds.append(seconds)
        # Calibration reuses one inference for every threshold (but polygonizes once per candidate); the final
        # scoring runs one more pass; then the report is drawn (matplotlib's first import) and the model saved.
        self.finish_s = 2.5 * validation_seconds + 3.0

    def typical_epoch(self) -> Optional[float]:
        recent = self.epoch_seconds[-3:]
        return sum(recent) / len(recent) if recent else None

    def room_for_another_epoch(self, elapsed: float) -> bool:
        """Whether one more epoch ends (to within half an epoch) before the training deadline."""
        deadline = self.training_deadline()
        if deadline is None:
            return True
        epoch = self.typical_epoch()
        if epoch is None:
            return elapsed < deadline
        return elapsed + 0.5 * epoch <= deadline

    def planned_epochs(self, done: int, elapsed: float, cap: int) -> int:
        """Epochs the run will make in all: measured epoch times into the time left, never more than cap."""
        deadline, epoch = self.training_deadline(), self.typical_epoch()
        if deadline is None or epoch is None or epoch <= 0:
            return cap
        more = max(0, math.floor((deadline - elapsed) / epoch + 0.5))
        return max(1, min(cap, done + more))

    def fraction_used(self, elapsed: float) -> float:
        """Share of the training time (loop start to deadline) used; 0 without a budget."""
        deadline = self.training_deadline()
        if deadline is None:
            return 0.0
        span = max(deadline - self.fit_started_s, 1e-6)
        return min(max((elapsed - self.fit_started_s) / span, 0.0), 1.0)
