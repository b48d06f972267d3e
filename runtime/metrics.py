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

top1: the standard error
    The paired error is ``sqrt((100^2 k/n - drop^2) / (n - 1))`` for ``k`` changed predictions
    (``details["stderr_paired"]``): 0 when no prediction changed, although a candidate that
    changes 1 % of the predictions changes none of 269 samples 7 % of the time. The class
    scores say more (:func:`flip_rate_estimate`): per sample the reference's margin ``m_i``
    (its top score minus the runner-up; probabilities, non-negative rows summing to 1, are
    compared as logs, so gaps are logit gaps) and the candidate's shift of that same gap
    ``e_i``; sample ``i`` changes when ``m_i + e_i < 0``. Taking shift and margin as
    independent, the share of changed predictions is ``p = (1/n^2) sum_i sum_j [e_j < -m_i]``
    (``details["changed_estimate"]``, percent): every observed shift against every observed
    margin, so a shift that came close to changing a prediction counts although none changed.
    ``details["stderr"]`` is the larger of the paired error and the same formula with ``p`` for
    ``k/n``. Limits: shifts grow with the logit scale, so pairing a confident sample's shift
    with an uncertain sample's margin overstates ``p`` somewhat (PyTorch seed CNN, 63 candidates
    of 5 fresh runs, on their test splits: 1.17x the share that changed); a compression that hurts
    exactly the uncertain samples understates it, and the paired error remains the floor.

Per-token outputs: real tokens only
    A model with an ``attention_mask`` input (a tokenizer's padding mask, ``[batch, sequence]``,
    non-zero = real token) whose first output is per token (rank 3, ``[batch, sequence,
    hidden]``, e.g. a BERT encoder's ``last_hidden_state``) is compared on the real tokens only:
    what the model writes at padded positions is never read by a correct consumer (pooling and
    token heads mask them out) and moves freely under compression, so counting it measures
    noise. :func:`score` gets the mask as ``token_mask``; then ``cosine`` is the cosine of each
    real token's hidden vector (``value`` = mean over real tokens, ``min`` = the worst token) and
    ``max_abs`` the largest difference over real tokens (other outputs: every element).
    ``details`` say which positions were used (``tokens`` real of ``positions``) and
    :attr:`Score.scope` says it in words ("over 3,412 real tokens of 12,800 positions").
    The validation helpers apply the rule by default; ``real_tokens_only=False``
    (``Evaluator``, ``validate``, ``PipelineSettings``) compares every position (cosine per
    sample over the flattened output, as for any other output). With real tokens, the standard
    error is taken over the samples' mean token drops (tokens of one sample are not independent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np

from onnx_compress.errors import DataError, SettingError
from onnx_compress.table import format_table

__all__ = ["MetricName", "MetricSpec", "Score", "score", "resolve_metric", "METRIC_NAMES", "MASK_INPUT",
           "token_mask_for", "flip_rate_estimate"]

#: the input whose non-zero entries mark real tokens (Hugging Face's name, used by every tokenizer)
MASK_INPUT = "attention_mask"

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

    @property
    def scope(self) -> str:
        """Which positions the metric was taken over, in words ("" when not known)."""
        tokens, positions = self.details.get("tokens"), self.details.get("positions")
        if tokens is not None and positions is not None:
            return f"over {int(tokens):,} real tokens of {int(positions):,} positions"
        samples = self.details.get("samples")
        return f"over {int(samples):,} samples" if samples is not None else ""

    def as_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["scope"] = self.scope
        return data

    def table(self) -> str:
        """The metric, reference and candidate values, the drop and the details, one per row."""
        rows = [["metric", self.metric], ["reference", f"{self.reference:.6g}"],
                ["candidate", f"{self.candidate:.6g}"], ["drop", f"{self.drop:.6g}"],
                *[[key, f"{value:.6g}"] for key, value in self.details.items()]]
        return format_table(["validate", ""], rows)


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
    drop = ref_acc - cand_acc
    n = len(labels)
    paired = _stderr(100.0 * ((ref_pred == labels).astype(np.float64) - (cand_pred == labels)))
    changes = flip_rate_estimate(_first(reference), _first(candidate), n)
    # the same standard error with the share of changed predictions estimated from the scores
    # (module docstring): sqrt((100^2 p - drop^2) / (n - 1)) is the paired one when p = flips / n
    smooth = float(np.sqrt(max(0.0, 1e4 * changes - drop**2) / (n - 1))) if n > 1 and changes == changes else 0.0
    return Score(
        metric="top1",
        reference=ref_acc,
        candidate=cand_acc,
        drop=drop,
        details={"agreement": float((ref_pred == cand_pred).mean() * 100.0), "samples": float(n),
                 "stderr": max(paired, smooth), "stderr_paired": paired,
                 "changed_estimate": 100.0 * changes if changes == changes else float("nan")},
    )


def _class_scores(output: np.ndarray, samples: int) -> np.ndarray | None:
    """``[samples, classes]`` float64 scores of the position top-1 reads (log of probabilities,
    so that gaps are logit gaps), or None when there are no two classes or a score is not finite."""
    scores = np.asarray(output, dtype=np.float64)
    if scores.ndim < 2 or scores.shape[-1] < 2 or scores.size == 0:
        return None
    scores = scores.reshape(samples, -1, scores.shape[-1])[:, 0, :]
    if not np.isfinite(scores).all():
        return None
    if (scores >= 0).all() and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):  # probabilities (softmax)
        scores = np.log(np.maximum(scores, 1e-30))
    return scores


def flip_rate_estimate(reference: np.ndarray, candidate: np.ndarray, samples: int) -> float:
    """The share of predictions (0-1) the candidate changes on data like this, estimated from the
    class scores (module docstring, "top1: the standard error"); NaN when the outputs have no
    class scores to compare."""
    ref, cand = _class_scores(reference, samples), _class_scores(candidate, samples)
    if ref is None or cand is None or ref.shape != cand.shape:
        return float("nan")
    rows = np.arange(samples)
    top = ref.argmax(axis=1)

    def gap(scores: np.ndarray) -> np.ndarray:  # the reference's class against the best other class
        others = scores.copy()
        others[rows, top] = -np.inf
        return scores[rows, top] - others.max(axis=1)

    margin = gap(ref)
    shift = np.sort(gap(cand) - margin)
    # sample i changes when margin_i + shift < 0; each observed shift is one draw of the shift
    return float(np.searchsorted(shift, -margin, side="left").mean() / samples)


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


def token_mask_for(output: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """The boolean ``[batch, sequence]`` real-token mask when ``output`` is per token (rank 3 with
    those leading axes) and ``mask`` is given, else None (the rule in the module docstring)."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim != 2 or output.ndim != 3 or tuple(output.shape[:2]) != tuple(mask.shape):
        return None
    return mask != 0


def _cosine(reference: Outputs, candidate: Outputs, token_mask: np.ndarray | None = None) -> Score:
    ref, cand = _first(reference), _first(candidate)
    real = token_mask_for(ref, token_mask)
    if real is not None:
        if not real.any():
            raise DataError(f"the {MASK_INPUT} input marks no real token: nothing to compare")
        cos = cosine_per_sample(ref[real], cand[real])  # one row per real token
        details = {"tokens": float(real.sum()), "positions": float(real.size), "samples": float(len(ref))}
        sample_of_token = np.nonzero(real)[0]  # the sample each real token belongs to
        counts = np.bincount(sample_of_token, minlength=len(ref))
        sums = np.bincount(sample_of_token, weights=1.0 - cos, minlength=len(ref))
        present = counts > 0
        stderr = _stderr(sums[present] / counts[present])
    else:
        cos = cosine_per_sample(ref, cand)
        details = {"samples": float(len(cos))}
        stderr = _stderr(1.0 - cos)
    mean = float(cos.mean())
    return Score(metric="cosine", reference=1.0, candidate=mean, drop=1.0 - mean,
                 details={"min": float(cos.min()), "stderr": stderr, **details})


def _max_abs(reference: Outputs, candidate: Outputs, token_mask: np.ndarray | None = None) -> Score:
    worst = 0.0
    details: dict[str, float] = {}
    for name, ref in reference.items():
        cand = np.asarray(candidate[name])
        if cand.shape != ref.shape:
            raise DataError(f"output {name!r} has shape {cand.shape}, the reference has {ref.shape}")
        real = token_mask_for(ref, token_mask)
        if real is not None:
            ref, cand = ref[real], cand[real]
            details = {"tokens": float(real.sum()), "positions": float(real.size)}
        if ref.size:
            worst = max(worst, float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64)))))
    return Score(metric="max_abs", reference=0.0, candidate=worst, drop=worst, details=details)


def score(
    metric: MetricSpec,
    reference: Outputs,
    candidate: Outputs,
    labels: np.ndarray | None = None,
    *,
    token_mask: np.ndarray | None = None,
) -> Score:
    """Score a candidate's outputs against a reference's (see the module docstring).

    ``token_mask``: the model's ``attention_mask`` input (``[batch, sequence]``) to compare
    per-token outputs on real tokens only; None compares every position.
    """
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
        return _cosine(reference, candidate, token_mask)
    return _max_abs(reference, candidate, token_mask)
