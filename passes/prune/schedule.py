"""The schedule: how many units of each group to cut, and which.

- ``layer`` scope: each group loses ``floor(ratio * prunable units)`` of its lowest-scored
  units (a group's own ratio from ``layer_ratios`` when one of its producers is named there).
- ``global`` scope: the units of all groups are ranked together by their score divided by
  their group's mean score, and the lowest ``floor(ratio * all prunable units)`` are cut, but
  no group loses more than ``max_ratio`` of its prunable units. Groups with an explicit
  ``layer_ratios`` entry are scheduled on their own.

Then, in both scopes, the kept width of each group (its units, fixed ones included) is
rounded *up* to a multiple of ``round_to`` (fast kernels like widths of 8 or 16), so the
schedule never cuts more than asked; a group always keeps at least one unit. A unit is one
channel for plain layers; for a grouped convolution it is one position in every group, and
for a depthwise convolution with multiplier ``m`` its ``m`` outputs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["GroupBudget", "plan_cuts"]


@dataclasses.dataclass(frozen=True)
class GroupBudget:
    """What the schedule knows of one group.

    Attributes:
        group_id: the group.
        n_units: all units of the group, fixed ones included.
        candidates: ids of the units that may be cut (not fixed, scored).
        scores: the score of every unit (only ``candidates`` are read).
        ratio: this group's own ratio, or None for the schedule's ratio.
    """

    group_id: int
    n_units: int
    candidates: np.ndarray
    scores: np.ndarray
    ratio: float | None = None


def _round_kept(n_units: int, n_cut: int, candidates: int, round_to: int) -> int:
    """Units to cut once the kept width is rounded up to a multiple of ``round_to``."""
    kept = n_units - n_cut
    if round_to > 1:
        kept = min(n_units, math.ceil(kept / round_to) * round_to)
    n_cut = min(n_units - kept, candidates)
    return max(0, min(n_cut, n_units - 1))


def _lowest(budget: GroupBudget, count: int) -> np.ndarray:
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(budget.scores[budget.candidates], kind="stable")
    return np.sort(budget.candidates[order[:count]])


def plan_cuts(
    budgets: list[GroupBudget],
    *,
    ratio: float,
    scope: str,
    round_to: int = 1,
    max_ratio: float = 0.9,
) -> dict[int, np.ndarray]:
    """The units to cut in each group (see the module docstring)."""
    cuts: dict[int, np.ndarray] = {}
    pooled: list[GroupBudget] = []
    for budget in budgets:
        if budget.ratio is not None or scope == "layer":
            own = budget.ratio if budget.ratio is not None else ratio
            count = math.floor(own * len(budget.candidates) + 1e-9)
            count = _round_kept(budget.n_units, count, len(budget.candidates), round_to)
            cuts[budget.group_id] = _lowest(budget, count)
        else:
            pooled.append(budget)
    if not pooled:
        return cuts
    entries: list[tuple[float, int, int]] = []  # (normalized score, position in pooled, unit)
    for position, budget in enumerate(pooled):
        values = budget.scores[budget.candidates]
        mean = float(values.mean()) if len(values) else 0.0
        for unit, value in zip(budget.candidates, values):
            entries.append((float(value) / mean if mean > 0 else 0.0, position, int(unit)))
    entries.sort()
    total = math.floor(ratio * len(entries) + 1e-9)
    caps = [math.floor(max_ratio * len(b.candidates) + 1e-9) for b in pooled]
    counts = [0] * len(pooled)
    taken = 0
    for _score, position, _unit in entries:
        if taken >= total:
            break
        if counts[position] < caps[position]:
            counts[position] += 1
            taken += 1
    for position, budget in enumerate(pooled):
        count = _round_kept(budget.n_units, counts[position], len(budget.candidates), round_to)
        cuts[budget.group_id] = _lowest(budget, count)
    return cuts
