"""Sensitivity analysis: how much each quantized node costs, and which to keep in float.

Ranking (:func:`rank_nodes`)
    For every candidate node ``n``, the model is quantized with ONLY ``n`` quantized (everything
    else float, same settings) and run on ``sensitivity_samples`` validation samples; its
    sensitivity is the budget metric's drop against the float model, ``s_n = drop(Q_{n})``, with
    ``1 - mean cosine`` of the first output as a tie-breaker (top1 on a few hundred samples moves
    in steps of one sample). Nodes are ranked by ``(s_n, output_error_n)``, most sensitive first.
    Cost: one quantization and one validation run per node (a progress bar shows it); static
    mode reuses the calibration ranges (ONNX Runtime's calibration cache).

Exclusion (:func:`choose_exclusions`)
    Quantization errors of different layers add up nearly linearly at int8 (on
    all-MiniLM-L6-v2 the sum of the 36 single-MatMul drops was 0.0069 against 0.0068 for all of
    them at once), so keeping a set ``F`` of nodes float is predicted to leave a drop of
    ``D - sum_{n in F} s_n``, where ``D`` is the measured drop with every node quantized. Keeping
    node ``n`` float costs its weights ``w_n`` (bytes kept float; for MatMul/Gemm also the float
    multiply-adds per row), so the nodes are taken in order of accuracy recovered per weight,
    ``s_n / w_n`` (the greedy answer to "recover ``D - max_drop`` while keeping the fewest weights
    float"): on MiniLM the 147k-weight V projections recover about as much per weight as the
    590k-weight feed-forward outputs. The shortest prefix of that order predicted to hold
    ``max_drop`` is tried, *measured on all validation data*, and grows (by one, three times, then
    doubling) until the measured drop holds or every node would be float. Only measured drops
    decide; the prediction just picks where to start.

Limits
    Interactions between layers are not modelled beyond the verification step; the excluded set
    is a prefix of the per-weight order, not an optimal subset. Weights are a proxy for the
    speed a float node costs (a Conv's multiply-adds also scale with its output size).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from onnx_compress.budget import Budget
from onnx_compress.errors import DataError
from onnx_compress.passes.quantize.analysis import Candidate
from onnx_compress.passes.quantize.result import NodeSensitivity
from onnx_compress.runtime.metrics import Score, cosine_per_sample, score
from onnx_compress.runtime.validate import Evaluator

__all__ = ["rank_nodes", "choose_exclusions", "exclusion_order", "ExclusionOutcome", "output_error"]

logger = logging.getLogger(__name__)


def output_error(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    """``1 - mean cosine`` between the first outputs (a continuous error, 0 = identical)."""
    first = next(iter(reference))
    return float(1.0 - cosine_per_sample(reference[first], candidate[first]).mean())


def rank_nodes(
    candidates: Sequence[Candidate],
    quantize_only: Callable[[str], Path],
    evaluator: Evaluator,
    *,
    progress: bool = True,
    on_done: Callable[[Path], None] | None = None,
) -> list[NodeSensitivity]:
    """Rank ``candidates`` by the error each causes alone (see the module docstring).

    Args:
        candidates: the nodes to analyse.
        quantize_only: returns the path of a model where only the named node is quantized.
        evaluator: the float model's outputs on the sensitivity samples, and the metric.
        on_done: called with each temporary model path once it has been measured (cleanup).
    """
    from tqdm.auto import tqdm

    ranking: list[NodeSensitivity] = []
    for candidate in tqdm(candidates, desc="sensitivity", unit="node", disable=not progress, leave=False):
        path = quantize_only(candidate.name)
        outputs = evaluator.outputs(path)
        measured = score(evaluator.metric, evaluator.reference_outputs, outputs, evaluator.data.labels,
                         token_mask=evaluator.token_mask)
        ranking.append(NodeSensitivity(
            name=candidate.name,
            op_type=candidate.op_type,
            drop=float(measured.drop),
            output_error=output_error(evaluator.reference_outputs, outputs),
            weight_elements=candidate.weight_elements,
        ))
        logger.debug("sensitivity %s: drop %.5g, output error %.5g", candidate.name, measured.drop,
                     ranking[-1].output_error)
        if on_done is not None:
            on_done(path)
    ranking.sort(key=lambda s: (s.drop, s.output_error), reverse=True)
    return ranking


@dataclasses.dataclass
class ExclusionOutcome:
    """The nodes kept float, the model and its measured score; ``met`` says whether the budget held."""

    excluded: list[str]
    path: Path | None
    score: Score | None
    met: bool
    tries: list[dict[str, float]]


def exclusion_order(ranking: Sequence[NodeSensitivity]) -> list[NodeSensitivity]:
    """Nodes by accuracy recovered per weight kept float (``s_n / w_n``; ties: output error)."""
    def key(node: NodeSensitivity) -> tuple[float, float]:
        weight = max(node.weight_elements, 1)
        return max(node.drop, 0.0) / weight, max(node.output_error, 0.0) / weight

    return sorted(ranking, key=key, reverse=True)


def _start(ranking: Sequence[NodeSensitivity], full_drop: float, max_drop: float) -> int:
    """The smallest prefix predicted to hold the budget, assuming errors add up."""
    remaining = full_drop
    for k, node in enumerate(ranking, start=1):
        remaining -= max(node.drop, 0.0)
        if remaining <= max_drop:
            return k
    return len(ranking)


def choose_exclusions(
    ranking: Sequence[NodeSensitivity],
    full_drop: float,
    max_drop: float,
    measure: Callable[[list[str]], tuple[Path, Score]],
    margin: float = 0.0,
) -> ExclusionOutcome:
    """Keep the nodes that recover most accuracy per weight float until the measured drop is
    <= ``max_drop`` (see the module docstring); with ``margin``, the drop plus ``margin``
    standard errors (``onnx_compress.budget``).

    ``measure(excluded)`` quantizes with ``excluded`` kept float and scores the model on all
    validation data. Never excludes every node: when only that would hold the budget, returns
    ``met=False`` with the best model found.
    """
    if not ranking:
        raise DataError("sensitivity ranking is empty: nothing to exclude")
    ranking = exclusion_order(ranking)
    n = len(ranking)
    k = min(_start(ranking, full_drop, max_drop), n - 1) if n > 1 else 0
    tries: list[dict[str, float]] = []
    best: tuple[list[str], Path, Score] | None = None
    budget = Budget(margin=margin)
    steps = 0
    while 0 < k < n:
        excluded = [node.name for node in ranking[:k]]
        path, measured = measure(excluded)
        tries.append({"excluded": float(k), "drop": float(measured.drop)})
        logger.info("keeping %d node(s) float: drop %.5g (budget %.5g)", k, measured.drop, max_drop)
        if best is None or measured.drop < best[2].drop:
            best = (excluded, path, measured)
        if budget.bound(measured.drop, float(measured.details.get("stderr", 0.0))) <= max_drop:
            return ExclusionOutcome(excluded, path, measured, True, tries)
        steps += 1
        step = 1 if steps <= 3 else k
        if k == n - 1:
            break
        k = min(k + step, n - 1)
    if best is None:
        return ExclusionOutcome([], None, None, False, tries)
    return ExclusionOutcome(best[0], best[1], best[2], False, tries)
