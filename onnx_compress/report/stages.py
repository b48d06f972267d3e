"""Report data: one :class:`StageReport` per stage (the original, then one per recipe pass).

Data only: rendering is :mod:`.text` (terminal) and :mod:`.html` (page), writing is :mod:`.files`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from onnx_compress.budget import Budget
from onnx_compress.jsonable import jsonable

__all__ = ["StageReport", "Report"]


@dataclasses.dataclass
class StageReport:
    """One stage of a compression run.

    ``decision`` is ``original`` for the input, ``applied`` (full strength), ``reduced`` (the
    budget search settled on ``strength`` < 1), or ``rolled back`` (no setting held the budget,
    or the pass refused; the stage's model is the previous stage's). Measurements (size, params,
    MACs, latency, metric) describe the model this stage hands on; latency ratios are against
    the original, measured in the same run.
    """

    name: str
    pass_name: str | None
    decision: str
    strength: float | None = None
    reason: str = ""
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    size_bytes: int = 0
    params: int = 0
    macs: int = 0
    latency_median_ms: float = float("nan")
    latency_p90_ms: float = float("nan")
    speedup: float = float("nan")
    metric_value: float = float("nan")
    drop: float = float("nan")
    #: standard error of ``drop`` over the validation samples (``onnx_compress.budget``)
    drop_stderr: float = float("nan")
    metric_details: dict[str, float] = dataclasses.field(default_factory=dict)
    pass_result: dict[str, Any] = dataclasses.field(default_factory=dict)
    pass_summary: str = ""
    trials: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    #: where the stage's time went: trial count, validation seconds, the pass's own breakdown
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.decision in ("original", "applied", "reduced", "no change")


@dataclasses.dataclass
class Report:
    """A whole compression run: the settings, every stage, the verdict and any warnings."""

    model: str
    recipe: dict[str, Any]
    metric: str
    max_drop: float | None
    stages: list[StageReport]
    budget_met: bool
    warnings: list[str] = dataclasses.field(default_factory=list)
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: standard errors added to the drop before the budget comparison (``onnx_compress.budget``)
    budget_margin: float = 0.0
    #: seconds per part of the run (passes, validation, timing, total)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    #: the drop on data no pass and no budget check saw, when the caller measured it
    #: (``{"drop", "stderr", "samples", "within_budget", ...}``; the demo fills it)
    test: dict[str, Any] | None = None

    #: which positions the metric compares ("cosine over 3,412 real tokens of 12,800 positions ...")
    metric_scope: str = ""
    #: the pass orders tried when a pass was starved of budget (``onnx_compress.rebalance``)
    alternatives: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def drop_bound(self) -> float:
        """The final drop plus its margin: what the budget was checked against."""
        se = self.final.drop_stderr
        return Budget(margin=self.budget_margin).bound(self.final.drop, se if se == se else 0.0)

    @property
    def original(self) -> StageReport:
        return self.stages[0]

    @property
    def final(self) -> StageReport:
        """The last stage whose model was kept (the output model)."""
        return [s for s in self.stages if s.kept][-1]

    @property
    def size_ratio(self) -> float:
        """How many times smaller the output is than the original (on disk)."""
        return self.original.size_bytes / max(1, self.final.size_bytes)

    def as_dict(self) -> dict[str, Any]:
        data = jsonable(self)
        data["summary"] = {
            "size_ratio": self.size_ratio,
            "speedup": self.final.speedup,
            "drop": self.final.drop,
            "drop_stderr": self.final.drop_stderr,
            "drop_bound": self.drop_bound,
            "budget_met": self.budget_met,
            "final_stage": self.final.name,
        }
        return data
