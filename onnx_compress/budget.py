"""The accuracy budget and the search that keeps a pass within it.

Budget
    "The metric may drop by at most ``max_drop`` against the uncompressed model", measured on
    held-out validation data (never the calibration data). Units are the metric's: percentage
    points for ``top1``, ``1 - mean cosine`` for ``cosine``, absolute error for ``max_abs``.

Search
    A pass that breaks the budget at full strength is searched down: :func:`bisect_strength`
    bisects the pass's ``strength`` in (0, 1] (``CompressionPass.scaled``) for the most
    aggressive setting that holds, over at most ``steps`` trials. Strength 0 (the pass not
    applied) is known to hold, strength 1 is known to fail, and the search assumes the drop
    grows with strength (true of pruning ratios and low-rank energies in practice; where it is
    not, bisection still returns a strength that was measured to hold). When no trial holds, the
    pass is rolled back. Every trial is recorded for the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Generic, TypeVar

from onnx_compress.errors import BudgetError

__all__ = ["Budget", "Trial", "SearchOutcome", "bisect_strength"]

T = TypeVar("T")
# a tiny slack so that a drop equal to the budget up to float rounding holds
_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Budget:
    """``max_drop`` in the metric's unit; ``None`` means no budget (passes run at full strength)."""

    max_drop: float | None = None

    def __post_init__(self) -> None:
        if self.max_drop is not None and not self.max_drop >= 0:
            raise BudgetError(f"max_drop must be >= 0, got {self.max_drop}")

    def holds(self, drop: float) -> bool:
        return self.max_drop is None or drop <= self.max_drop + _EPS

    def remaining(self, drop: float) -> float | None:
        """What is left of the budget after ``drop`` has been spent (never below 0)."""
        return None if self.max_drop is None else max(0.0, self.max_drop - drop)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One measured setting: its strength, the metric drop, whether it held."""

    strength: float
    drop: float
    holds: bool
    note: str = ""


@dataclasses.dataclass
class SearchOutcome(Generic[T]):
    """The best candidate that held (None: roll back) and every trial made."""

    best: T | None
    strength: float
    trials: list[Trial]


def bisect_strength(
    attempt: Callable[[float], tuple[T, float] | None],
    budget: Budget,
    *,
    steps: int = 5,
    first: tuple[T, float] | None = None,
) -> SearchOutcome[T]:
    """Most aggressive strength in (0, 1] whose candidate holds the budget.

    Args:
        attempt: ``strength -> (candidate, drop)``, or None when the pass cannot be scaled.
        budget: the budget to hold.
        steps: the most trials, counting the full-strength one.
        first: the already-measured full-strength result, if any (saves one trial).
    """
    trials: list[Trial] = []
    full = first if first is not None else attempt(1.0)
    if full is None:
        return SearchOutcome(best=None, strength=0.0, trials=trials)
    candidate, drop = full
    trials.append(Trial(1.0, drop, budget.holds(drop)))
    if budget.holds(drop):
        return SearchOutcome(best=candidate, strength=1.0, trials=trials)
    low, high = 0.0, 1.0
    best: T | None = None
    best_strength = 0.0
    for _ in range(steps - 1):
        mid = (low + high) / 2
        result = attempt(mid)
        if result is None:
            trials.append(Trial(mid, float("nan"), False, "pass cannot be scaled"))
            break
        candidate, drop = result
        ok = budget.holds(drop)
        trials.append(Trial(mid, drop, ok))
        if ok:
            low, best, best_strength = mid, candidate, mid
        else:
            high = mid
    return SearchOutcome(best=best, strength=best_strength, trials=trials)
