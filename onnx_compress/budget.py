"""The accuracy budget and the search that keeps a pass within it.

Budget
    "The metric may drop by at most ``max_drop`` against the uncompressed model", measured on
    held-out validation data (never the calibration data). Units are the metric's: percentage
    points for ``top1``, ``1 - mean cosine`` for ``cosine``, absolute error for ``max_abs``.

Margin for the size of the validation split
    The drop measured on ``n`` validation samples is an estimate of the drop on data the search
    never saw. Per sample ``i`` the paired drop is ``d_i`` (top1: 100 x (reference right -
    candidate right), so -100, 0 or +100; cosine: ``1 - cos_i``); the measured drop is their
    mean and its standard error ``se = sd(d) / sqrt(n)``. The budget holds when

        ``max(drop, 0) + z * se <= max_drop``        (``z`` = ``margin``, default 1.41)

    Three choices, each measured on fresh training runs of the seed CNNs (issue 16):

    1. ``z = 1.41 = sqrt(2)``: the promise is about the drop on a NEW sample (the user's data,
       a test split), not only about its expectation. The new sample's drop differs from the
       true drop by its own standard error; for a new sample the size of the validation data
       ``drop_new - drop_val`` has the standard error ``sqrt(se^2 + se^2) = sqrt(2) se``, and
       ``z = sqrt(2)`` is one standard error of that difference (a one-sided ~84 % prediction
       bound under the normal approximation). One standard error of the mean alone (``z = 1``)
       let the PyTorch seed CNN's test drop exceed 0.5 points in 2 of 5 fresh runs.
    2. A gain is not credited (``max(drop, 0)``): no pass trains on the labels, so a candidate
       that is right more often than the original on validation is the luck of the split; the
       search measures up to ~15 settings per run and would otherwise prefer the setting whose
       changed predictions happened to favour the validation images (measured: a refinement
       trial at -0.37 +- 0.37, one gained image, was kept and lost 3 test images, 0.56 points).
    3. On top1 ``se`` does not collapse to 0 when no prediction changed: with ``k`` changed
       predictions ``se = sqrt((100^2 k/n - drop^2) / (n - 1))``, 0 for ``k = 0``, although a
       setting that changes 1 % of the predictions changes none of 269 images 7 % of the time
       (0.99^269) and the search looks at many settings. ``runtime.metrics`` also estimates the
       share ``p`` of changed predictions from the class scores, which carry more than the
       argmax: per sample the reference's margin ``m_i`` (top score minus the runner-up, logits;
       probabilities are taken as logs) and the candidate's shift of that gap ``e_i``; a sample
       changes when ``m_i + e_i < 0``; taking shift and margin as independent, ``p = (1/n^2)
       sum_i sum_j [e_j < -m_i]`` (every observed shift tried against every observed margin:
       shifts that came close to changing a prediction count although none did). The standard
       error is the larger of the paired one and ``sqrt((100^2 p - drop^2) / (n - 1))`` (the
       same formula with ``p`` for ``k/n``).

    Together, on 269 validation images and a 0.5-point budget, a setting holds when it loses no
    image net and changes an estimated <= ~0.33 % of the predictions (``se <= 0.35``); one lost
    image (0.37 + 1.41 x 0.37) or one changed prediction of any kind (se 0.37) does not hold.
    ``margin=0`` is the plain comparison of the (gain-clipped) drop. Limits: the normal
    approximation is rough for a handful of changes; the score-based ``p`` assumes that a
    sample's shift does not depend on its margin (shifts grow with the logit scale, so pairing
    a confident sample's large shift with an uncertain one's small margin overstates ``p``: 1.17x
    the share that changed on the test splits of the PyTorch seed CNN, 63 candidates of 5 fresh
    runs); the bound is about a
    sample the size of the validation data, and a smaller one (a 360-image test split is close)
    is noisier. ``max_abs`` is a maximum, not a mean: it has no standard error and no margin.

Resolution of the split
    On ``top1`` one sample is ``100 / n`` points, and one net lost prediction (no other flip)
    measures ``100/n +- 100/n``. With margin ``z`` its bound ``(1 + z) 100 / n`` exceeds a
    budget below it: then the budget is finer than the split resolves, only settings that lose
    no prediction net on validation can hold, and the search stops early on any model that
    flips predictions. :func:`resolution_note` says so (the pipeline puts it in the report's
    warnings), with the validation size that would resolve the budget:
    ``n >= (1 + z) 100 / max_drop`` (482 samples for 0.5 points at ``z = 1.41``; the digits
    split has 269). The test split has the same grain: on 360 test images a 0.5-point budget
    allows one net lost image (0.28), two are 0.56.

Search
    A pass that breaks the budget at full strength is searched down: :func:`bisect_strength`
    bisects the pass's ``strength`` in (0, 1] (``CompressionPass.scaled``) for the most
    aggressive setting that holds, over at most ``steps`` trials. Strength 0 (the pass not
    applied) is known to hold, strength 1 is known to fail, and the search assumes the drop
    grows with strength (true of pruning ratios and low-rank energies in practice; where it is
    not, bisection still returns a strength that was measured to hold). When no trial holds, the
    pass is rolled back. Every trial is recorded for the report.

Refinement: one strength for the whole pass is a coarse knob. Structured pruning cuts several
layers (channel groups) that differ in what they cost in accuracy and what they buy in speed:
on the seed CNNs, halving conv1's channels alone gives ~1.8x at batch 8, while one strength
for all groups is held back by whichever group flips predictions first. When the bisection
settled below full strength, :func:`refine` then tries, part by part (a pass's
``refinement_keys``: the layers of a structured cut, in graph order), that part at full
strength with the rest at the searched strength, keeping each one that still holds the budget
(greedy, cumulative, at most ``steps`` measured trials; a part whose full strength changes
nothing is skipped without a trial). Every trial is checked with the same margin, so the extra
trials widen the choice, not the budget.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from onnx_compress.errors import BudgetError

__all__ = ["Budget", "Trial", "SearchOutcome", "bisect_strength", "refine", "resolution_note", "DEFAULT_MARGIN"]

T = TypeVar("T")
# a tiny slack so that a drop equal to the budget up to float rounding holds
_EPS = 1e-9


#: standard errors added to a measured drop before it is compared with max_drop (see above):
#: one standard error of the drop on a fresh sample the size of the validation data, sqrt(2) se
DEFAULT_MARGIN = 1.41  # sqrt(2), rounded for the help texts


@dataclasses.dataclass(frozen=True)
class Budget:
    """``max_drop`` in the metric's unit; ``None`` means no budget (passes run at full strength).
    ``margin``: standard errors of the measured drop added before the comparison (see above)."""

    max_drop: float | None = None
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        if self.max_drop is not None and not self.max_drop >= 0:
            raise BudgetError(f"max_drop must be >= 0, got {self.max_drop}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not self.margin >= 0:
            raise BudgetError(f"the budget margin must be a number of standard errors >= 0, got {self.margin!r}")

    def bound(self, drop: float, stderr: float = 0.0) -> float:
        """The drop with its margin: ``max(drop, 0) + margin * stderr`` (a gain is not credited)."""
        return max(drop, 0.0) + self.margin * stderr

    def holds(self, drop: float, stderr: float = 0.0) -> bool:
        return self.max_drop is None or self.bound(drop, stderr) <= self.max_drop + _EPS

    def remaining(self, drop: float, stderr: float = 0.0) -> float | None:
        """What is left of the budget after ``drop`` (and its margin) has been spent (never below 0)."""
        return None if self.max_drop is None else max(0.0, self.max_drop - self.bound(drop, stderr))


def resolution_note(metric: str, max_drop: float | None, samples: int, margin: float) -> str | None:
    """A sentence when a ``top1`` budget is finer than ``samples`` validation samples resolve
    (see the module docstring), else None."""
    if metric != "top1" or max_drop is None or samples < 1:
        return None
    one = 100.0 / samples
    if (1.0 + margin) * one <= max_drop + _EPS:
        return None
    needed = math.ceil((1.0 + margin) * 100.0 / max_drop) if max_drop > 0 else None
    more = f"; {needed} or more validation samples would resolve it" if needed else ""
    return (f"the budget ({max_drop:g} top-1 points) is finer than {samples} validation samples resolve: one lost "
            f"prediction is {one:.2f} +- {one:.2f} points (bound {(1.0 + margin) * one:.2f} with margin {margin:g}), "
            f"so only settings that lose no prediction net on validation hold{more}")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One measured setting: its strength, the metric drop and its standard error, whether it held."""

    strength: float
    drop: float
    holds: bool
    note: str = ""
    stderr: float = 0.0
    seconds: float = 0.0


@dataclasses.dataclass
class SearchOutcome(Generic[T]):
    """The best candidate that held (None: roll back) and every trial made; ``full``: the parts
    :func:`refine` raised to full strength."""

    best: T | None
    strength: float
    trials: list[Trial]
    full: tuple[str, ...] = ()


def bisect_strength(
    attempt: Callable[[float], tuple[T, float] | None],
    budget: Budget,
    *,
    steps: int = 5,
    first: tuple[T, float] | None = None,
    deadline: float | None = None,
) -> SearchOutcome[T]:
    """Most aggressive strength in (0, 1] whose candidate holds the budget.

    Args:
        attempt: ``strength -> (candidate, drop)`` or ``(candidate, drop, stderr)``, or None
            when the pass cannot be scaled.
        budget: the budget to hold.
        steps: the most trials, counting the full-strength one.
        first: the already-measured full-strength result, if any (saves one trial).
        deadline: a ``time.perf_counter()`` value: no further trial is started when the last
            one, repeated, would end after it (the full-strength trial always runs); the
            search then keeps the best setting found so far and says so in the last trial's
            note.
    """
    trials: list[Trial] = []
    start = time.perf_counter()
    full = first if first is not None else attempt(1.0)
    if full is None:
        return SearchOutcome(best=None, strength=0.0, trials=trials)
    candidate, drop, stderr = _unpack(full)
    trials.append(Trial(1.0, drop, budget.holds(drop, stderr), stderr=stderr, seconds=time.perf_counter() - start))
    if budget.holds(drop, stderr):
        return SearchOutcome(best=candidate, strength=1.0, trials=trials)
    low, high = 0.0, 1.0
    best: T | None = None
    best_strength = 0.0
    for _ in range(steps - 1):
        if deadline is not None and time.perf_counter() + trials[-1].seconds > deadline:
            trials[-1] = dataclasses.replace(trials[-1], note=(trials[-1].note + "; " if trials[-1].note else "")
                                             + "search stopped: time budget")
            break
        mid = (low + high) / 2
        start = time.perf_counter()
        result = attempt(mid)
        if result is None:
            trials.append(Trial(mid, float("nan"), False, "pass cannot be scaled"))
            break
        candidate, drop, stderr = _unpack(result)
        ok = budget.holds(drop, stderr)
        trials.append(Trial(mid, drop, ok, stderr=stderr, seconds=time.perf_counter() - start))
        if ok:
            low, best, best_strength = mid, candidate, mid
        else:
            high = mid
    return SearchOutcome(best=best, strength=best_strength, trials=trials)


def refine(
    attempt: Callable[[tuple[str, ...]], tuple[T, float] | None],
    keys: Sequence[str],
    budget: Budget,
    outcome: SearchOutcome[T],
    *,
    steps: int = 4,
    deadline: float | None = None,
) -> SearchOutcome[T]:
    """Raise parts of a searched-down pass to full strength, one at a time (see the module docstring).

    Args:
        attempt: ``parts at full strength -> (candidate, drop[, stderr])`` at ``outcome.strength``
            for the other parts, or None when that setting is the same model as the best so far
            (no trial is recorded).
        keys: the parts, in the order to try them.
        budget: the budget every kept setting holds.
        outcome: the bisection's outcome (held below full strength); updated in place.
        steps: the most measured trials.
        deadline: as for :func:`bisect_strength`.
    """
    if outcome.best is None or not 0 < outcome.strength < 1:
        return outcome
    measured = 0
    for key in keys:
        if measured >= steps:
            break
        last = outcome.trials[-1].seconds if outcome.trials else 0.0
        if deadline is not None and time.perf_counter() + last > deadline:
            break
        start = time.perf_counter()
        result = attempt((*outcome.full, key))
        if result is None:
            continue
        measured += 1
        candidate, drop, stderr = _unpack(result)
        ok = budget.holds(drop, stderr)
        note = f"refine: {key} at full strength" + (f" (with {', '.join(outcome.full)})" if outcome.full else "")
        outcome.trials.append(Trial(outcome.strength, drop, ok, note, stderr=stderr,
                                    seconds=time.perf_counter() - start))
        if ok:
            outcome.best, outcome.full = candidate, (*outcome.full, key)
    return outcome


def _unpack(result: tuple) -> tuple:  # (candidate, drop[, stderr]) -> (candidate, drop, stderr)
    return (result[0], result[1], result[2]) if len(result) > 2 else (result[0], result[1], 0.0)
