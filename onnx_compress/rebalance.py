"""Re-balance the accuracy budget after a pass was starved of it.

Why
    The pipeline spends the budget greedily, in recipe order: every pass gets what the passes
    before it left. A pass that buys little (size only) can then starve one that buys a lot
    (speed and size). all-MiniLM-L6-v2 exported by the TorchScript exporter, ``small`` preset,
    budget 0.01 cosine: the 4-bit embedding step spent 0.0064 for 1.84x smaller and no speed;
    int8, the step that brings the speed, then needed 0.0102 with 0.0036 left and was not applied.

Rule
    After the recipe has run, a stage is *starved* when it did not apply for lack of budget: it
    was rolled back with every trial over the budget, it made no change and its pass said the
    budget was why (its result names ``max_drop``), or it applied only by keeping nodes
    uncompressed for the budget (quantization's sensitivity exclusions: int8 with a few MatMuls
    kept float is the slower int8). When an earlier kept stage spent budget (its
    drop rose over the stage before it), the largest such spender is the *donor*, and ONE
    alternative order is run: from the model before the donor, the passes after it in recipe
    order, then the donor pass again at the end with whatever budget is left (it may apply,
    apply reduced, or roll back, by the usual rules). Both end results are then timed side by
    side with the original (one ``compare_many`` run, the pipeline's batch) and the one of higher
    *value* is kept; the default value is ``size ratio x speed-up`` (both against the original,
    so a 2x speed-up is worth a 2x size cut), the ``balanced`` trade. Ties keep the recipe order.
    The report lists both alternatives with their drop, size ratio, speed-up and value.

Limits
    One alternative per run (the largest donor before the first starved stage): each costs
    re-running the passes after the donor. The value compares end results only, on this
    machine's timing (the pipeline's settled blocks; a loaded machine moves speed ratios by a
    few percent, which can flip a near tie).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import onnx_ir as ir

from onnx_compress.model_io import weights_nbytes
from onnx_compress.report import StageReport

__all__ = ["Alternative", "Swap", "find_swap", "balanced_value", "rebalance"]

logger = logging.getLogger(__name__)


class StageLike(Protocol):
    report: StageReport
    model: ir.Model | None


class PassRunner(Protocol):
    def run_pass(self, index: int, pass_: Any) -> Any: ...


def balanced_value(size_ratio: float, speedup: float) -> float:
    """The default worth of an end result: times smaller x times faster (both vs the original)."""
    return size_ratio * speedup


@dataclasses.dataclass(frozen=True)
class Swap:
    """Run the pass of stage ``donor`` after the others, because stage ``starved`` lacked budget."""

    donor: int
    starved: int


@dataclasses.dataclass
class Alternative:
    """One order of the recipe's passes, measured end to end."""

    label: str
    stages: list[str]
    drop: float
    size_ratio: float
    speedup: float
    value: float
    chosen: bool = False

    def line(self) -> str:
        mark = "kept" if self.chosen else "not kept"
        return (f"{self.label}: drop {self.drop:.4g}, {self.size_ratio:.2f}x smaller, {self.speedup:.2f}x faster, "
                f"value {self.value:.2f} ({mark}; {'; '.join(self.stages)})")


def _starved(report: StageReport) -> bool:
    if report.decision == "applied":  # applied, but kept nodes uncompressed to fit what was left
        excluded = report.pass_result.get("excluded") or []
        return any(isinstance(node, dict) and node.get("reason") == "sensitivity" for node in excluded)
    if report.decision == "rolled back":
        return bool(report.trials) and not any(trial.get("holds") for trial in report.trials)
    if report.decision == "no change":
        return "max_drop" in str(report.pass_result.get("nothing_to_do", ""))
    return False


def _drop(report: StageReport) -> float:
    return 0.0 if report.drop is None or math.isnan(report.drop) else float(report.drop)


def find_swap(reports: Sequence[StageReport]) -> Swap | None:
    """The first starved stage and the earlier kept stage that spent the most budget (module docstring)."""
    for index, report in enumerate(reports):
        if index < 2 or not _starved(report):
            continue
        best: tuple[float, int] | None = None
        previous = 0.0
        for earlier in range(1, index):
            candidate = reports[earlier]
            if candidate.decision not in ("applied", "reduced"):
                continue
            cost = _drop(candidate) - previous
            previous = _drop(candidate)
            if cost > 1e-12 and (best is None or cost > best[0]):
                best = (cost, earlier)
        if best is not None:
            return Swap(donor=best[1], starved=index)
    return None


def _describe(stages: Sequence[StageLike]) -> list[str]:
    return [f"{s.report.name} {s.report.decision}" for s in stages[1:] if s.report.pass_name]


def _final(stages: Sequence[StageLike]) -> StageLike:
    return [s for s in stages if s.model is not None][-1]


def rebalance(
    stages: list[StageLike],
    passes: Sequence[Any],
    start: Callable[[ir.Model, float], PassRunner],
    time_models: Callable[[list[ir.Model]], list[float]],
    *,
    value: Callable[[float, float], float] = balanced_value,
) -> tuple[list[StageLike], list[Alternative]]:
    """Try the alternative order when a stage was starved; return the stages to keep and the
    alternatives measured (empty when nothing was starved).

    Args:
        stages: the recipe's run: ``stages[0]`` the original, ``stages[i]`` pass ``passes[i - 1]``.
        passes: the configured passes, in recipe order.
        start: ``(model, drop spent so far) -> runner`` whose ``run_pass(index, pass_)`` runs one
            pass under the budget and returns its stage.
        time_models: median latencies of the given models, timed side by side.
        value: the worth of an end result from (size ratio, speed-up).
    """
    swap = find_swap([s.report for s in stages])
    if swap is None:
        return stages, []
    donor = stages[swap.donor]
    before = [s for s in stages[: swap.donor] if s.model is not None][-1]
    logger.info("re-balancing: %s was starved of budget after %s spent %.4g; trying %s last",
                stages[swap.starved].report.name, donor.report.name,
                _drop(donor.report) - _drop(before.report), donor.report.name)
    runner = start(before.model, _drop(before.report))  # type: ignore[arg-type]
    order = [*range(swap.donor + 1, len(stages)), swap.donor]
    retried = []
    for position in order:
        stage = runner.run_pass(position, passes[position - 1])
        if position == swap.donor:
            stage.report.name += f" (moved after {stages[-1].report.name})"
        retried.append(stage)
    alternative = [*stages[: swap.donor], *retried]

    original = stages[0].model
    finals = [_final(stages), _final(alternative)]
    latencies = time_models([original, finals[0].model, finals[1].model])  # type: ignore[list-item]
    size = weights_nbytes(original)  # type: ignore[arg-type]
    measured: list[Alternative] = []
    for label, run, final, latency in (("recipe order", stages, finals[0], latencies[1]),
                                       (f"{donor.report.name} moved last", alternative, finals[1], latencies[2])):
        ratio = size / max(1, weights_nbytes(final.model))  # type: ignore[arg-type]
        speed = latencies[0] / latency
        measured.append(Alternative(label, _describe(run), _drop(final.report), ratio, speed, value(ratio, speed)))
    keep = 1 if measured[1].value > measured[0].value else 0
    measured[keep].chosen = True
    for alt in measured:
        logger.info("re-balancing: %s", alt.line())
    return (alternative if keep == 1 else stages), measured
