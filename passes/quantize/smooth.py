"""Activation smoothing (SmoothQuant) before dynamic int8: move activation outliers into weights.

Why
    Dynamic int8 quantizes each MatMul's input with ONE scale per tensor, computed at run time
    from its min and max. In pretrained transformers a few input channels carry values 10-100x
    larger than the rest, so that one scale leaves the other channels a handful of int8 steps.
    Per-channel weight scales cannot help: they are per OUTPUT channel.

Maths (Xiao et al. 2023, "SmoothQuant")
    For ``Y = X W`` with ``W`` of shape ``(K, N)``, any positive per-input-channel vector ``s``
    gives the same product: ``Y = (X diag(1/s)) (diag(s) W)``. With ``a_k = max |X[:, k]|`` over
    calibration data and ``w_k = max |W[k, :]|``,
    ``s_k = a_k ** alpha / w_k ** (1 - alpha)`` (then divided by its geometric mean) shrinks the
    outlier channels of ``X`` and widens the matching weight rows: ``alpha`` trades activation
    range for weight range. The division becomes one ``Mul`` node per smoothed input, shared by
    every smoothed MatMul that reads it (Q, K and V read the same LayerNorm output); other
    readers of that input (a residual ``Add``) keep the original values. The output of a fused
    ``MultiHeadAttention`` needs no ``Mul``: the division goes into the value projection's weight
    columns and bias instead (exact, see :func:`_fold_into_value_projection`). In float the model
    is unchanged up to rounding.

    all-MiniLM-L6-v2 (fused, dynamic int8 per-channel, every MatMul quantized), embedding cosine
    to fp32 on 200 held-out sentences, mean / min: no smoothing 0.9926 / 0.9757; alpha 0.5
    0.9878 / 0.9767; 0.65 0.9967 / 0.9930; 0.75 0.9975 / 0.9942; 0.85 0.9975 / 0.9927. The
    best alpha depends on the model, so the pass picks it on validation data
    (:data:`ALPHA_CHOICES`).

Limits
    Only ``MatMul`` nodes with a constant 2-D float weight as second input and a computed first
    input are smoothed (ONNX Runtime's dynamic quantizer turns Gemm into MatMul itself, after
    this step). The ``Mul`` nodes cost an element-wise pass each (MiniLM: 18 of them after the
    attention folds, a few percent of the int8 model's time, most at batch 1); folding them into
    a preceding LayerNorm whose output feeds only the smoothed MatMuls is not done (in post-norm
    encoders like BERT that output is also the residual).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from onnx_compress.data import Dataset
from onnx_compress.runtime.activations import iter_activations
from onnx_compress.runtime.session import SessionSettings

__all__ = ["ALPHA_CHOICES", "SmoothGroup", "smoothing_groups", "input_absmax", "smooth"]

logger = logging.getLogger(__name__)

#: the migration strengths tried when ``smooth="auto"``, best first on all-MiniLM-L6-v2
ALPHA_CHOICES: tuple[float, ...] = (0.75, 0.85, 0.65)
#: bounds on a channel's scale, so a dead channel (max 0) cannot blow a weight row up
_SCALE_LIMITS = (1e-3, 1e3)


@dataclasses.dataclass(frozen=True)
class SmoothGroup:
    """The MatMul nodes that read one input value (smoothed with one shared scale vector)."""

    input_name: str
    nodes: tuple[str, ...]


def _smoothable(node: ir.Node) -> bool:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return False
    activation, weight = node.inputs
    if activation is None or weight is None or activation.const_value is not None:
        return False
    tensor = weight.const_value
    return tensor is not None and tensor.dtype == ir.DataType.FLOAT and len(tensor.shape) == 2 \
        and (activation.producer() is not None or activation.is_graph_input())


def smoothing_groups(model: ir.Model, node_names: Iterable[str]) -> list[SmoothGroup]:
    """Group the smoothable MatMuls among ``node_names`` by the input value they read."""
    wanted = set(node_names)
    groups: dict[str, list[str]] = {}
    for node in model.graph:
        if node.name in wanted and _smoothable(node):
            groups.setdefault(node.inputs[0].name, []).append(node.name)  # type: ignore[union-attr]
    return [SmoothGroup(name, tuple(nodes)) for name, nodes in groups.items()]


def input_absmax(model: ir.Model, groups: list[SmoothGroup], data: Dataset, *, batch_size: int = 32,
                 settings: SessionSettings | None = None) -> dict[str, np.ndarray]:
    """``max |x|`` per last-axis channel of every group's input, over ``data``."""
    absmax: dict[str, np.ndarray] = {}
    names = [group.input_name for group in groups]
    for batch in iter_activations(model, names, data, batch_size=batch_size, settings=settings):
        for name, value in batch.items():
            channels = np.abs(np.asarray(value, dtype=np.float32)).reshape(-1, value.shape[-1]).max(axis=0)
            absmax[name] = channels if name not in absmax else np.maximum(absmax[name], channels)
    return absmax


def _scales(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    a = np.maximum(activation_max.astype(np.float64), 1e-8)
    w = np.maximum(weight_max.astype(np.float64), 1e-8)
    s = a**alpha / w ** (1.0 - alpha)
    s /= np.exp(np.mean(np.log(s)))  # geometric mean 1: overall magnitudes stay where they were
    s = np.clip(s, *_SCALE_LIMITS)
    s[(activation_max <= 0) | (weight_max <= 0)] = 1.0
    return s


def _replace_weight(model: ir.Model, node: ir.Node, array: np.ndarray, suffix: str, index: int = 1) -> None:
    """Point input ``index`` of ``node`` at a new initializer holding ``array`` (never written in place)."""
    name = f"{node.inputs[index].name}_{suffix}"  # type: ignore[union-attr]
    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array, dtype=np.float32), name=name))
    model.graph.register_initializer(value)
    node.replace_input_with(index, value)


def _fold_into_value_projection(model: ir.Model, source: ir.Value, scales: np.ndarray) -> bool:
    """Divide by ``scales`` inside the attention instead of with a ``Mul``, when exact.

    A ``MultiHeadAttention`` output channel ``k`` is a softmax-weighted sum of channel ``k`` of its
    value input, so dividing the value projection's weight column ``k`` (and its bias, the last
    third of the fused Q/K/V bias) by ``s_k`` divides output channel ``k`` by ``s_k``. Done only
    when the value comes straight from a MatMul with a constant 2-D weight that nothing else
    reads, and the bias, if any, is a constant of three times the width; returns whether it was.
    """
    attention = source.producer()
    if attention is None or attention.op_type != "MultiHeadAttention" or attention.domain != "com.microsoft":
        return False
    if source is not attention.outputs[0] or len(attention.inputs) < 3 or attention.inputs[1] is None:
        return False  # packed Q/K/V has no separate value input
    value = attention.inputs[2]
    projection = value.producer() if value is not None else None
    if projection is None or projection.op_type != "MatMul" or projection.domain not in ("", "ai.onnx"):
        return False
    if len(list(value.uses())) != 1 or value.is_graph_output():
        return False
    weight = projection.inputs[1].const_value if projection.inputs[1] is not None else None
    if weight is None or len(weight.shape) != 2 or weight.shape[1] != scales.size:
        return False
    bias_value = attention.inputs[3] if len(attention.inputs) > 3 else None
    bias = bias_value.const_value if bias_value is not None else None
    if bias_value is not None and (bias is None or tuple(bias.shape) != (3 * scales.size,)):
        return False
    _replace_weight(model, projection, weight.numpy() / scales[None, :], "value_folded")
    if bias is not None:
        folded = bias.numpy().astype(np.float64).copy()
        folded[2 * scales.size:] /= scales
        _replace_weight(model, attention, folded, "value_folded", index=3)
    return True


def smooth(model: ir.Model, groups: list[SmoothGroup], absmax: Mapping[str, np.ndarray], alpha: float) -> ir.Model:
    """A copy of ``model`` with every group smoothed at strength ``alpha`` (see the module docstring).

    New tensors are created; the input model's tensors are shared, never written.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    work = model.clone()
    nodes = {node.name: node for node in work.graph}
    order = {name: index for index, name in enumerate(nodes)}
    for index, group in enumerate(groups):
        members = [nodes[name] for name in group.nodes]
        weights = [m.inputs[1].const_value.numpy() for m in members]  # type: ignore[union-attr]
        channels = absmax[group.input_name]
        if any(w.shape[0] != channels.shape[0] for w in weights):
            logger.info("smoothing: skipped %s (weight rows differ from the input's channels)", group.input_name)
            continue
        weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scales = _scales(channels, weight_max, alpha)
        source = members[0].inputs[0]
        if not _fold_into_value_projection(work, source, scales):
            inverse = ir.Value(name=f"smooth_{index}_inverse_scale",
                               const_value=ir.tensor((1.0 / scales).astype(np.float32),
                                                     name=f"smooth_{index}_inverse_scale"))
            work.graph.register_initializer(inverse)
            mul = ir.node("Mul", [source, inverse], name=f"smooth_{index}_Mul",
                          outputs=[ir.Value(name=f"smooth_{index}_out", type=source.type, shape=source.shape)])
            first = min(members, key=lambda m: order[m.name])
            work.graph.insert_before(first, mul)
            for member in members:
                member.replace_input_with(0, mul.outputs[0])
        for member, weight in zip(members, weights):
            _replace_weight(work, member, weight * scales[:, None], "smoothed")
    ir.passes.common.RemoveUnusedNodesPass()(work)
    return work
