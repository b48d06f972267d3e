"""Validation of a candidate model against a reference model on data.

An :class:`Evaluator` runs the reference model once over the data set and keeps its outputs,
so that many candidates (every stage of a pipeline, every step of a search) are each run once
and scored against the same reference. :func:`validate` is the one-shot form.

Per-token outputs of a model with an ``attention_mask`` input are compared on real tokens only
(``runtime.metrics``, "Per-token outputs"); ``real_tokens_only=False`` compares every position.
"""

from __future__ import annotations

import logging

import numpy as np

from onnx_compress.data import DataSource, load_data
from onnx_compress.errors import DataError
from onnx_compress.runtime.metrics import MASK_INPUT, MetricSpec, Score, resolve_metric, score, token_mask_for
from onnx_compress.runtime.session import ModelSource, Runner, SessionSettings

__all__ = ["Evaluator", "validate"]

logger = logging.getLogger(__name__)


class Evaluator:
    """Scores candidate models against a reference on a fixed data set.

    Args:
        reference: the uncompressed model (an ``onnx_ir.Model``, a path, or bytes).
        data: the validation data (held out: never the calibration data).
        metric: ``auto``, ``top1``, ``cosine``, ``max_abs`` or a callable (see ``metrics``).
        batch_size: samples per ONNX Runtime call.
        settings: session settings for both models.
        real_tokens_only: compare per-token outputs on the real tokens of the data's
            ``attention_mask`` only (default True; see ``runtime.metrics``).
    """

    def __init__(
        self,
        reference: ModelSource,
        data: DataSource,
        metric: MetricSpec = "auto",
        *,
        batch_size: int = 64,
        settings: SessionSettings | None = None,
        real_tokens_only: bool = True,
    ) -> None:
        self.data = load_data(data)
        self.metric = resolve_metric(metric, self.data.labels is not None)
        self.batch_size = batch_size
        self.settings = settings or SessionSettings()
        runner = Runner(reference, self.settings)
        self.reference_outputs = runner.run_dataset(self.data, batch_size)
        self.output_names = runner.output_names
        mask = self.data.inputs.get(MASK_INPUT) if real_tokens_only else None
        first = next(iter(self.reference_outputs.values()), None)
        #: the real-token mask the metric uses (None: every position counts)
        self.token_mask = mask if first is not None and token_mask_for(first, mask) is not None else None

    @property
    def scope(self) -> str:
        """Which positions the metric compares, in words (for reports)."""
        if self.token_mask is not None:
            real = int((self.token_mask != 0).sum())
            return (f"{self.metric_name} over {real:,} real tokens of {self.token_mask.size:,} positions "
                    f"(padded positions of {MASK_INPUT} left out)")
        return f"{self.metric_name} over {len(self.data):,} samples"

    @property
    def metric_name(self) -> str:
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "custom")

    def outputs(self, candidate: ModelSource) -> dict[str, np.ndarray]:
        """The candidate's outputs on the data set."""
        runner = Runner(candidate, self.settings)
        if runner.output_names != self.output_names:
            raise DataError(
                f"candidate outputs {runner.output_names} differ from the reference's {self.output_names}"
            )
        return runner.run_dataset(self.data, self.batch_size)

    def evaluate(self, candidate: ModelSource) -> Score:
        """Score ``candidate`` against the reference."""
        result = score(self.metric, self.reference_outputs, self.outputs(candidate), self.data.labels,
                       token_mask=self.token_mask)
        logger.info("%s: reference %.6g, candidate %.6g, drop %.6g", result.metric,
                    result.reference, result.candidate, result.drop)
        return result


def validate(
    reference: ModelSource,
    candidate: ModelSource,
    data: DataSource,
    metric: MetricSpec = "auto",
    *,
    batch_size: int = 64,
    settings: SessionSettings | None = None,
    real_tokens_only: bool = True,
) -> Score:
    """Score ``candidate`` against ``reference`` on ``data`` (see :class:`Evaluator`)."""
    return Evaluator(reference, data, metric, batch_size=batch_size, settings=settings,
                     real_tokens_only=real_tokens_only).evaluate(candidate)
