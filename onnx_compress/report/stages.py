"""Report data: one :class:`StageReport` per stage (the original, then one per recipe pass)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["StageReport", "Report", "write_text_atomic"]


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
    metric_details: dict[str, float] = dataclasses.field(default_factory=dict)
    pass_result: dict[str, Any] = dataclasses.field(default_factory=dict)
    pass_summary: str = ""
    trials: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

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
    #: which positions the metric compares ("cosine over 3,412 real tokens of 12,800 positions ...")
    metric_scope: str = ""
    #: the pass orders tried when a pass was starved of budget (``onnx_compress.rebalance``)
    alternatives: list[dict[str, Any]] = dataclasses.field(default_factory=list)

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
        from onnx_compress.passes.base import jsonable

        data = jsonable(self)
        data["summary"] = {
            "size_ratio": self.size_ratio,
            "speedup": self.final.speedup,
            "drop": self.final.drop,
            "budget_met": self.budget_met,
            "final_stage": self.final.name,
        }
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, allow_nan=True)

    def save(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``report.json`` and ``report.html`` into ``folder`` (created if missing)."""
        from onnx_compress.report.html import render_html

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "html": out / "report.html"}
        write_text_atomic(paths["json"], self.to_json())
        write_text_atomic(paths["html"], render_html(self))
        return paths


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
