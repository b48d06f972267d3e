"""Fidelity metrics: how close a candidate model's outputs are to a reference's.

Every metric turns (reference outputs, candidate outputs, labels) into a :class:`Score` with a
``drop``: how much worse the candidate is, in the metric's own unit, positive meaning worse.
An accuracy budget "may drop by at most X" is ``score.drop <= X``.

``top1``
    Classification accuracy in percent (0-100) of the argmax over the last axis of the first
    output, against ``labels``. ``drop`` = reference accuracy - candidate accuracy, in
    percentage points. Also reports ``agreement``: the percentage of samples where both
    models predict the same class (needs no labels).
``cosine``
    Per sample, the cosine similarity between the flattened first outputs of reference and
    candidate: ``<r, c> / (|r| |c|)``. ``value`` is the mean over samples, ``min`` the worst;
    ``drop`` = 1 - mean. Two zero vectors count as identical (1.0), one zero vector as 0.0.
``max_abs``
    The largest absolute element-wise difference over all outputs; ``drop`` = that value.
a callable
    ``fn(outputs, labels) -> float`` scoring one model's outputs (higher is better), e.g. a task
    metric; ``drop`` = fn(reference) - fn(candidate).

``auto`` means ``top1`` when labels are present, else ``cosine``.

``details["stderr"]`` (``top1``, ``cosine``): the standard error of the drop over the samples,
from the paired per-sample drops (top1: 100 x (reference right - candidate right), each -100, 0
or 100; cosine: 1 - cos), ``sd / sqrt(n)``; ``onnx_compress.budget`` turns it into a margin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np

from onnx_compress.errors import DataError, SettingError

__all__ = ["MetricName", "MetricSpec", "Score", "score", "resolve_metric", "METRIC_NAMES"]

MetricName = Literal["top1", "cosine", "max_abs"]
METRIC_NAMES: tuple[str, ...] = ("top1", "cosine", "max_abs")
Outputs = Mapping[str, np.ndarray]
UserMetric = Callable[[Outputs, "np.ndarray | None"], float]
MetricSpec = MetricName | Literal["auto"] | UserMetric


@dataclasses.dataclass(frozen=True)
class Score:
    """A metric measured on a candidate against a reference.

    Attributes:
        metric: the metric's name.
        reference: the metric's value for the reference model (top1: its accuracy; cosine: 1.0;
            max_abs: 0.0).
        candidate: the metric's value for the candidate.
        drop: how much worse the candidate is (positive = worse), in the metric's unit.
        details: extra numbers (cosine ``min``, top1 ``agreement``, sample count).
    """

    metric: str
    reference: float
    candidate: float
    drop: float
    details: dict[str, float] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def resolve_metric(metric: MetricSpec, has_labels: bool) -> MetricName | UserMetric:
    """Resolve ``auto`` and check that ``top1`` has labels to work with."""
    if callable(metric):
        return metric
    if metric == "auto":
        return "top1" if has_labels else "cosine"
    if metric not in METRIC_NAMES:
        raise SettingError(f"metric must be one of auto, {', '.join(METRIC_NAMES)}; got {metric!r}")
    if metric == "top1" and not has_labels:
        raise DataError("metric 'top1' needs a 'labels' array in the data")
    return metric  # type: ignore[return-value]


def _first(outputs: Outputs) -> np.ndarray:
    return np.asarray(next(iter(outputs.values())))


def _top1(reference: Outputs, candidate: Outputs, labels: np.ndarray | None) -> Score:
    assert labels is not None  # resolve_metric guarantees it
    ref_pred = _first(reference).argmax(axis=-1).reshape(len(labels), -1)[:, 0]
    cand_pred = _first(candidate).argmax(axis=-1).reshape(len(labels), -1)[:, 0]
    ref_acc = float((ref_pred == labels).mean() * 100.0)
    cand_acc = float((cand_pred == labels).mean() * 100.0)
    return Score(
        metric="top1",
        reference=ref_acc,
        candidate=cand_acc,
        drop=ref_acc - cand_acc,
        details={"agreement": float((ref_pred == cand_pred).mean() * 100.0), "samples": float(len(labels)),
                 "stderr": _stderr(100.0 * ((ref_pred == labels).astype(np.float64) - (cand_pred == labels)))},
    )


def _stderr(per_sample_drop: np.ndarray) -> float:
    """Standard error of the mean of paired per-sample drops (0 with fewer than two samples)."""
    n = len(per_sample_drop)
    return float(per_sample_drop.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def cosine_per_sample(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample's flattened vectors (see the module docstring)."""
    r = reference.reshape(reference.shape[0], -1).astype(np.float64)
    c = candidate.reshape(candidate.shape[0], -1).astype(np.float64)
    r_norm = np.linalg.norm(r, axis=1)
    c_norm = np.linalg.norm(c, axis=1)
    dot = (r * c).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (r_norm * c_norm)
    both_zero = (r_norm == 0) & (c_norm == 0)
    cos = np.where(both_zero, 1.0, np.where((r_norm == 0) | (c_norm == 0), 0.0, cos))
    return np.clip(cos, -1.0, 1.0)


def _cosine(reference: Outputs, candidate: Outputs) -> Score:
    cos = cosine_per_sample(_first(reference), _first(candidate))
    mean = float(cos.mean())
    return Score(
        metric="cosine",
        reference=1.0,
        candidate=mean,
        drop=1.0 - mean,
        details={"min": float(cos.min()), "samples": float(len(cos)), "stderr": _stderr(1.0 - cos)},
    )


def _max_abs(reference: Outputs, candidate: Outputs) -> Score:
    worst = 0.0
    for name, ref in reference.items():
        cand = np.asarray(candidate[name])
        if cand.shape != ref.shape:
            raise DataError(f"output {name!r} has shape {cand.shape}, the reference has {ref.shape}")
        if ref.size:
            worst = max(worst, float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64)))))
    return Score(metric="max_abs", reference=0.0, candidate=worst, drop=worst)


def score(
    metric: MetricSpec,
    reference: Outputs,
    candidate: Outputs,
    labels: np.ndarray | None = None,
) -> Score:
    """Score a candidate's outputs against a reference's (see the module docstring)."""
    resolved = resolve_metric(metric, labels is not None)
    if list(reference) != list(candidate):
        raise DataError(
            f"candidate outputs {list(candidate)} differ from the reference's {list(reference)}"
        )
    if callable(resolved):
        ref_value = float(resolved(reference, labels))
        cand_value = float(resolved(candidate, labels))
        name = getattr(resolved, "__name__", "custom")
        return Score(metric=name, reference=ref_value, candidate=cand_value, drop=ref_value - cand_value)
    if resolved == "top1":
        return _top1(reference, candidate, labels)
    if resolved == "cosine":
        return _cosine(reference, candidate)
    return _max_abs(reference, candidate)
