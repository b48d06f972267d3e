"""Recovery losses: what "close to the teacher" means for each kind of output.

For each output the student shares with the teacher, the kind is set or detected from the
teacher's outputs (and the graph):

``kl`` — class scores ``(n, classes)``: ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``
    (Hinton et al. 2015) with ``z`` the outputs in log space (logits and log-probabilities as
    they are, probabilities as ``log(max(p, tiny))``: see ``training/distill/common.py``), plus
    ``label_weight * CE(z_s, y)`` when the data has ``labels``. Validation metric: top-1 (%)
    against the labels when there are labels, else agreement (%) with the teacher's top-1.
``cosine`` — embeddings ``(n, d)`` (detected when the teacher's rows have unit L2 norm):
    ``mean(1 - cos(s, t))``. Validation metric: the mean cosine.
``token`` — per-token features ``(n, seq, d)`` with an ``attention_mask``-like input of shape
    ``(n, seq)``: ``mean over real tokens of (1 - cos(s_i, t_i)) + |s_i - t_i|^2 / mean(|t|^2)``;
    padded positions are not compared (they carry no meaning and drown the signal when a
    sentence is short). Validation metric: the mean cosine over real tokens.
``mse`` — anything else (feature maps, regressions): ``mean((s - t)^2) / mean(t^2)``, the
    squared error relative to the teacher's energy, so its size does not depend on the output's
    scale. Validation metric: ``1 - relative squared error`` (higher is better, 1 = exact).

Intermediate values matched by name (``match``) use the ``token`` form when they are per-token
and a mask exists, else ``mse``, each weighted by ``match_weight``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from onnx_compress.optional import require
from onnx_compress.training.distill.common import PROB_FLOOR, detect_output_kind

__all__ = ["LossKind", "OutputLoss", "detect_loss", "find_mask_input"]

torch = require("torch", "recovery training")
F = torch.nn.functional

LossKind = Literal["kl", "cosine", "token", "mse"]


def find_mask_input(inputs: Mapping[str, np.ndarray]) -> str | None:
    """The name of an attention-mask input (integer or bool, rank 2, name containing ``mask``)."""
    for name, array in inputs.items():
        if "mask" in name.lower() and array.ndim == 2 and (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            return name
    return None


def detect_loss(teacher: np.ndarray, mask: np.ndarray | None) -> LossKind:
    """The loss kind for an output, from the teacher's values (see the module docstring)."""
    values = np.asarray(teacher)
    if values.ndim == 2 and values.shape[1] >= 2:
        norms = np.linalg.norm(values.astype(np.float64), axis=1)
        if np.all(np.abs(norms - 1.0) < 1e-3):
            return "cosine"
        return "kl"
    if values.ndim == 3 and mask is not None and mask.shape == values.shape[:2]:
        return "token"
    return "mse"


def _token_weights(mask: Any, like: Any) -> Any:
    weights = mask.to(like.dtype)
    return weights / weights.sum().clamp_min(1.0)


@dataclasses.dataclass
class OutputLoss:
    """The loss and validation metric of one output (or one matched intermediate value)."""

    name: str
    kind: LossKind
    weight: float = 1.0
    temperature: float = 2.0
    class_kind: str = "logits"  # logits | log_probs | probs, for kl

    def log_space(self, x: Any) -> Any:
        return torch.log(x.clamp_min(PROB_FLOOR)) if self.class_kind == "probs" else x

    def prepare_teacher(self, teacher: np.ndarray) -> None:
        if self.kind == "kl":
            self.class_kind = detect_output_kind(teacher)

    def loss(self, student: Any, teacher: Any, mask: Any | None, labels: Any | None, label_weight: float) -> Any:
        if self.kind == "kl":
            t = self.temperature
            zs, zt = self.log_space(student), self.log_space(teacher)
            kd = F.kl_div(F.log_softmax(zs / t, -1), F.log_softmax(zt / t, -1), log_target=True,
                          reduction="batchmean") * (t * t)
            if labels is not None and label_weight > 0:
                return (1 - label_weight) * kd + label_weight * F.cross_entropy(zs, labels)
            return kd
        if self.kind == "cosine":
            return (1 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)).mean()
        if self.kind == "token" and mask is not None:
            weights = _token_weights(mask, student)
            cos = F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)
            energy = ((teacher * teacher).sum(-1) * weights).sum().clamp_min(1e-12)
            sq = ((student - teacher) ** 2).sum(-1)
            return ((1 - cos) * weights).sum() + (sq * weights).sum() / energy
        return ((student - teacher) ** 2).mean() / (teacher * teacher).mean().clamp_min(1e-12)

    # ---- validation metric (numpy, whole validation set)

    @property
    def metric_name(self) -> str:
        return {"kl": "agreement", "cosine": "cosine", "token": "cosine", "mse": "1-rel_mse"}[self.kind]

    def metric(self, student: np.ndarray, teacher: np.ndarray, mask: np.ndarray | None,
               labels: np.ndarray | None) -> tuple[str, float, float | None]:
        """``(name, value, min)`` — higher is better; ``min`` is the worst sample's cosine where defined."""
        s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
        if self.kind == "kl":
            if labels is not None:
                return "top1", float((s.argmax(-1) == labels).mean() * 100), None
            return "agreement", float((s.argmax(-1) == t.argmax(-1)).mean() * 100), None
        if self.kind in ("cosine", "token"):
            cos = (s * t).sum(-1) / np.maximum(np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1), 1e-12)
            if self.kind == "token" and mask is not None and cos.ndim == 2:
                real = mask.astype(bool)
                per_sample = (cos * real).sum(1) / np.maximum(real.sum(1), 1)
                return "cosine", float(cos[real].mean()), float(per_sample.min())
            return "cosine", float(cos.mean()), float(cos.min())
        rel = float(((s - t) ** 2).mean() / max(float((t * t).mean()), 1e-12))
        return "1-rel_mse", 1.0 - rel, None
