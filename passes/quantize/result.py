"""What :class:`~onnx_compress.passes.quantize.Quantize` reports: every decision and its reason.

``QuantizeResult.as_dict()`` is the JSON report; :meth:`QuantizeResult.summary` one line;
:meth:`QuantizeResult.lines` the human-readable report the CLI prints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from onnx_compress.passes.base import CompressionResult
from onnx_compress.table import human_bytes

__all__ = ["Choice", "ExcludedNode", "NodeSensitivity", "SpeedCheck", "QuantizeResult"]


@dataclasses.dataclass
class Choice:
    """An automatic decision: which setting, the value chosen, and why."""

    setting: str
    value: Any
    reason: str


@dataclasses.dataclass
class ExcludedNode:
    """A candidate node kept in float, why, and what keeping it costs.

    ``reason`` is one of ``user`` (named in ``exclude``), ``sensitivity`` (kept for the
    accuracy budget), ``too small`` (fewer weights than ``min_weight_elements``) and
    ``op type dropped`` (its op type made the model slower, or was not selected).
    ``sensitivity`` is the metric drop measured with only this node quantized (when analysed);
    ``float_bytes_kept`` the weight bytes that stay float32.
    """

    name: str
    op_type: str
    reason: str
    detail: str = ""
    sensitivity: float | None = None
    float_bytes_kept: int = 0


@dataclasses.dataclass
class NodeSensitivity:
    """The error one node causes when it alone is quantized, on the validation samples.

    ``drop`` is in the budget metric's unit (positive = worse); ``output_error`` is
    ``1 - mean cosine`` of the first output against the float model, a finer signal used to
    break ties (top1 on a few hundred samples moves in steps).
    """

    name: str
    op_type: str
    drop: float
    output_error: float
    weight_elements: int


@dataclasses.dataclass
class SpeedCheck:
    """The guard's interleaved benchmark of the result against the input.

    ``speedup`` = median over blocks of (input median / result median); ``verdict`` is
    ``faster``, ``slower`` (every block slower) or ``inconclusive`` (see ``guard.py``).
    """

    input_ms: float
    output_ms: float
    speedup: float
    batch: int
    runs: int
    threads: int | None
    label: str = "result"
    block_speedups: list[float] = dataclasses.field(default_factory=list)
    verdict: str = "faster"


@dataclasses.dataclass
class QuantizeResult(CompressionResult):
    """What quantization did (see the field comments); ``modified`` is False when nothing was done."""

    mode: str = ""
    #: why nothing was done ("" when the model was quantized)
    nothing_to_do: str = ""
    #: quantized node names (as named in the prepared model) and counts per op type
    quantized: list[str] = dataclasses.field(default_factory=list)
    quantized_op_types: dict[str, int] = dataclasses.field(default_factory=dict)
    excluded: list[ExcludedNode] = dataclasses.field(default_factory=list)
    choices: list[Choice] = dataclasses.field(default_factory=list)
    #: nodes ranked by sensitivity, most sensitive first (empty when not analysed)
    sensitivity: list[NodeSensitivity] = dataclasses.field(default_factory=list)
    #: every configuration the guard benchmarked (op types tried and their speedups)
    speed_trials: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    speed: SpeedCheck | None = None
    #: why speed was not measured, when it was not
    speed_note: str = ""
    #: the metric on the validation data against the input (Score.as_dict()), when validated
    accuracy: dict[str, Any] | None = None
    max_drop: float | None = None
    size_before: int = 0
    size_after: int = 0
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: where the time went, per step (smoothing + quantization, speed guard, budget, sensitivity)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        """How many times smaller the model is (1.0 when unchanged)."""
        return self.size_before / self.size_after if self.size_after else 1.0

    def summary(self) -> str:
        if not self.modified:
            return f"nothing to do: {self.nothing_to_do}" if self.nothing_to_do else "unchanged"
        ops = ", ".join(f"{n} {op}" for op, n in sorted(self.quantized_op_types.items()))
        text = f"{self.mode}: quantized {ops}"
        if self.excluded:
            text += f"; {len(self.excluded)} kept float"
        text += f"; {self.size_ratio:.2f}x smaller"
        if self.speed is not None:
            word = {"faster": "faster", "slower": "SLOWER", "inconclusive": "not measurably faster"}
            text += f", {self.speed.speedup:.2f}x ({word.get(self.speed.verdict, self.speed.verdict)})"
        if self.accuracy is not None:
            text += f", {self.accuracy['metric']} drop {self.accuracy['drop']:.4g}"
        return text

    def lines(self) -> list[str]:
        """A human-readable report: what was quantized, kept float and why, size, speed, accuracy."""
        out: list[str] = []
        if not self.modified:
            out.append(self.summary())
            out.extend(self._guard_lines())
            out.extend(f"decided {choice.setting} = {choice.value}: {choice.reason}" for choice in self.choices
                       if choice.setting in ("mode", "objective"))
            out.extend(f"WARNING: {w}" for w in self.warnings)
            return out
        out.append(f"mode: {self.mode}")
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.quantized_op_types.items()))
        out.append(f"quantized: {len(self.quantized)} nodes ({ops})")
        if self.excluded:
            out.append(f"kept float: {len(self.excluded)} nodes")
            for node in self.excluded:
                cost = f", keeps {human_bytes(node.float_bytes_kept)} float" if node.float_bytes_kept else ""
                sens = f", sensitivity {node.sensitivity:.4g}" if node.sensitivity is not None else ""
                detail = f": {node.detail}" if node.detail else ""
                out.append(f"  {node.name} ({node.op_type}) - {node.reason}{detail}{sens}{cost}")
        out.append(f"size: {human_bytes(self.size_before)} -> {human_bytes(self.size_after)} "
                   f"({self.size_ratio:.2f}x smaller)")
        if self.speed is not None:
            s = self.speed
            blocks = ", ".join(f"{r:.2f}" for r in s.block_speedups)
            out.append(f"speed: {s.speedup:.2f}x vs the input, {s.verdict} ({s.input_ms:.3f} -> {s.output_ms:.3f} ms "
                       f"median, batch {s.batch}, {s.runs} runs in {len(s.block_speedups)} side-by-side blocks: {blocks}x, "
                       f"threads {s.threads or 'auto'})")
        elif self.speed_note:
            out.append(f"speed: {self.speed_note}")
        if self.accuracy is not None:
            a = self.accuracy
            extra = ", ".join(f"{k} {v:.4g}" for k, v in a.get("details", {}).items() if k != "samples")
            budget = f" (budget {self.max_drop:.4g})" if self.max_drop is not None else ""
            out.append(f"accuracy: {a['metric']} {a['reference']:.4g} -> {a['candidate']:.4g}, "
                       f"drop {a['drop']:.4g}{budget}" + (f"; {extra}" if extra else ""))
        out.extend(self._guard_lines())
        for choice in self.choices:
            out.append(f"auto {choice.setting} = {choice.value}: {choice.reason}")
        out.extend(f"WARNING: {w}" for w in self.warnings)
        return out

    def _guard_lines(self) -> list[str]:
        """The speed guard's measurements, one line each (configuration, speed-up, verdict, size)."""
        if len(self.speed_trials) < 2 and self.modified:
            return []
        out = []
        for trial in self.speed_trials:
            what = trial.get("label") if trial.get("label") not in (None, "first") else None
            what = what or "+".join(trial.get("op_types", [])) or "?"
            size = f", {human_bytes(int(trial['size_bytes']))}" if trial.get("size_bytes") else ""
            out.append(f"guard: {what}: {float(trial['speedup']):.2f}x the input's speed, {trial['verdict']}{size}")
        return out
