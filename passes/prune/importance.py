"""Importance of the units of a coupled group: which channels matter least.

Every method scores each *member* of a group along its channel axis, divides the member's
scores by their mean (so a layer with large weights does not outvote the others), and sums
the scores of the indices each unit holds. A unit nothing scores gets NaN and is kept.

- ``l1`` / ``l2``: the L1 / L2 norm of every output-channel slice of the group's weights
  (``W[c, ...]`` of a Conv, column ``c`` of a MatMul weight): magnitude filter pruning
  (Li et al., 2017). For a residual group every producer of the shared channels contributes.
- ``bn``: ``|gamma_c|`` of the group's BatchNormalization scales (network slimming, Liu et
  al., 2017). Needs BatchNorm kept in the graph (``Normalize(fold_batchnorm=False)``;
  PyTorch's exporter already folds it in eval mode). A group without BatchNorm falls back to
  ``l1``, and the report says so.
- ``activation``: data-driven. For every weighted op that reads the group's channels, the
  root-mean-square activation of channel ``c`` on calibration data times the L2 norm of the
  weights that read it, ``sqrt(E[x_c^2]) * ||W[:, c]||``: the RMS of what channel ``c`` adds
  to the op's output, i.e. how much the output moves when the channel is removed. Groups that
  no weighted op reads fall back to the RMS output activation of their producers. (On the
  seed CNNs it measured better than ``E|x_c|`` and worse than ``l2``: activations are scored
  one layer at a time on the unpruned model.)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnx_compress.data import Dataset
from onnx_compress.errors import PassRefusedError
from onnx_compress.passes.prune.coupling import AxisNode, Group
from onnx_compress.passes.prune.relations import Role

__all__ = ["IMPORTANCE_METHODS", "UnitScores", "score_group", "activation_probes", "collect_activation_means"]

logger = logging.getLogger(__name__)

IMPORTANCE_METHODS = ("l1", "l2", "bn", "activation")


@dataclasses.dataclass(frozen=True)
class UnitScores:
    """Scores of a group's units (NaN: unscored) and the method actually used."""

    scores: np.ndarray
    method: str
    note: str = ""


def _normalized(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if values.size else 0.0
    return values / mean if mean > 0 else np.zeros_like(values)


def _norms_along(array: np.ndarray, axis: int, p: int) -> np.ndarray:
    """Norm of every slice ``array.take(i, axis)``."""
    moved = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0).reshape(array.shape[axis], -1)
    return np.abs(moved).sum(axis=1) if p == 1 else np.sqrt((moved * moved).sum(axis=1))


def _accumulate(group: Group, contributions: Iterable[tuple[AxisNode, np.ndarray]]) -> np.ndarray:
    scores = np.zeros(group.n_units, dtype=np.float64)
    scored = np.zeros(group.n_units, dtype=bool)
    for axis, values in contributions:
        units = group.unit_of[axis.id]
        np.add.at(scores, units, _normalized(values))
        scored[units] = True
    scores[~scored] = np.nan
    return scores


def _magnitude(group: Group, p: int) -> np.ndarray | None:
    seen: set[int] = set()
    contributions = []
    for axis, _node in group.axes_with_role(Role.PRODUCER):
        if axis.id in seen or not axis.is_initializer:
            continue
        seen.add(axis.id)
        contributions.append((axis, _norms_along(axis.value.const_value.numpy(), axis.axis, p)))  # type: ignore[union-attr]
    return _accumulate(group, contributions) if contributions else None


def _batchnorm(group: Group) -> np.ndarray | None:
    contributions = [
        (axis, np.abs(axis.value.const_value.numpy().astype(np.float64)))  # type: ignore[union-attr]
        for axis, _node in group.axes_with_role(Role.BN_SCALE)
        if axis.is_initializer
    ]
    return _accumulate(group, contributions) if contributions else None


def input_channel_weight_norms(node: ir.Node, channels: int) -> np.ndarray | None:
    """L2 norm of the weights of ``node`` that read each input channel (None: no constant weight)."""
    op = node.op_type
    if op == "Conv":
        weight = node.inputs[1].const_value if node.inputs[1] is not None else None
        if weight is None:
            return None
        w = weight.numpy().astype(np.float64)
        groups = node.attributes.get_int("group", 1)
        per_group = w.shape[1]
        out_per_group = w.shape[0] // groups
        squares = (w * w).reshape(w.shape[0], per_group, -1).sum(axis=2)  # [C_out, C_in / group]
        norms = np.zeros(channels)
        for c in range(channels):
            g, j = divmod(c, per_group)
            norms[c] = squares[g * out_per_group:(g + 1) * out_per_group, j].sum()
        return np.sqrt(norms)
    if op == "ConvTranspose":
        weight = node.inputs[1].const_value if node.inputs[1] is not None else None
        return None if weight is None else _norms_along(weight.numpy(), 0, 2)
    if op == "Gemm":
        weight = node.inputs[1].const_value if node.inputs[1] is not None else None
        if weight is None:
            return None
        return _norms_along(weight.numpy(), 1 if node.attributes.get_int("transB", 0) else 0, 2)
    if op == "MatMul":
        weight = node.inputs[1].const_value if node.inputs[1] is not None else None
        if weight is None:
            return None
        w = weight.numpy()
        return _norms_along(w, w.ndim - 2, 2)
    return None


def activation_probes(groups: Iterable[Group]) -> list[tuple[ir.Value, int]]:
    """The (activation, axis) pairs whose per-channel means the activation method needs."""
    probes: dict[tuple[int, int], tuple[ir.Value, int]] = {}
    for group in groups:
        consumers = [(axis.value, axis.axis) for axis, _ in group.axes_with_role(Role.CONSUMER_INPUT)
                     if not axis.is_initializer]
        if not consumers:  # fall back to the producers' outputs
            consumers = [(axis.value, axis.axis) for axis in group.axes
                         if not axis.is_initializer and axis.value.producer() is not None
                         and axis.value.producer() in group.producers]
        for value, axis in consumers:
            probes[(id(value), axis)] = (value, axis)
    return list(probes.values())


def collect_activation_means(
    model: ir.Model,
    probes: list[tuple[ir.Value, int]],
    data: Dataset,
    *,
    batch_size: int = 32,
    max_samples: int = 256,
) -> dict[tuple[str, int], np.ndarray]:
    """RMS per channel, sqrt(E[x_c^2]), of each probe over ``data`` (at most ``max_samples`` samples).

    The model is cloned with the probed values added as outputs and run in ONNX Runtime.
    """
    from tqdm import tqdm

    from onnx_compress.runtime.session import Runner, SessionSettings

    names = sorted({str(value.name) for value, _ in probes})
    probe_model = model.clone()
    by_name = {str(v.name): v for node in probe_model.graph for v in node.outputs}
    input_names = {str(v.name) for v in probe_model.graph.inputs}
    existing = {str(v.name) for v in probe_model.graph.outputs}
    for name in names:
        if name not in existing and name not in input_names:
            if name not in by_name:
                raise PassRefusedError(f"cannot probe activation '{name}': it is not computed by a node")
            probe_model.graph.outputs.append(by_name[name])
    runner = Runner(probe_model, SessionSettings(provider="cpu"))
    subset = data.take(max_samples)
    subset.check_against(runner.input_specs, what="calibration data")
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = {}
    wanted = [(str(value.name), axis) for value, axis in probes]
    batches = list(subset.batches(batch_size))
    for feeds in tqdm(batches, desc="activation statistics", unit="batch", disable=None, leave=False):
        feeds = {spec.name: feeds[spec.name] for spec in runner.input_specs}
        outputs = dict(zip(runner.output_names, runner.run(feeds)))
        for name, axis in wanted:
            array = feeds[name] if name in feeds else outputs[name]
            moved = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0)
            flat = moved.reshape(moved.shape[0], -1)
            key = (name, axis)
            sums[key] = sums.get(key, 0) + (flat * flat).sum(axis=1)
            counts[key] = counts.get(key, 0) + flat.shape[1]
    return {key: np.sqrt(sums[key] / max(counts[key], 1)) for key in sums}


def _activation(group: Group, means: dict[tuple[str, int], np.ndarray]) -> np.ndarray | None:
    contributions = []
    for axis, node in group.axes_with_role(Role.CONSUMER_INPUT):
        key = (str(axis.value.name), axis.axis)
        if axis.is_initializer or key not in means:
            continue
        weights = input_channel_weight_norms(node, axis.size)
        contributions.append((axis, means[key] * (weights if weights is not None else 1.0)))
    if not contributions:
        for axis in group.axes:
            key = (str(axis.value.name), axis.axis)
            if not axis.is_initializer and key in means and axis.value.producer() in group.producers:
                contributions.append((axis, means[key]))
    return _accumulate(group, contributions) if contributions else None


def score_group(group: Group, method: str, means: dict[tuple[str, int], np.ndarray] | None = None) -> UnitScores:
    """Scores of the units of ``group`` by ``method`` (see the module docstring)."""
    if method == "bn":
        scores = _batchnorm(group)
        if scores is not None:
            return UnitScores(scores, "bn")
        fallback = _magnitude(group, 1)
        return UnitScores(_nan_if_none(fallback, group), "l1", "no BatchNormalization in this group: l1 used")
    if method == "activation":
        scores = _activation(group, means or {})
        if scores is not None:
            return UnitScores(scores, "activation")
        fallback = _magnitude(group, 1)
        return UnitScores(_nan_if_none(fallback, group), "l1", "no activation statistics for this group: l1 used")
    p = 2 if method == "l2" else 1
    return UnitScores(_nan_if_none(_magnitude(group, p), group), method)


def _nan_if_none(scores: np.ndarray | None, group: Group) -> np.ndarray:
    return scores if scores is not None else np.full(group.n_units, np.nan)
