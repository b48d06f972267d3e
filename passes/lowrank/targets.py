"""Which nodes the low-rank pass can factor, and the weight matrix of each as ``W`` (K x N).

Every layer is seen as ``Y = X W`` with ``X`` the rows of its input and ``W`` a constant K x N
matrix:

- ``MatMul(X, W)``: ``W`` is the 2-D initializer on the right; ``X`` may be batched
  (``[..., M, K]``, as in transformers): its rows are all but the last axis.
- ``Gemm(A, B, C)``: ``Y = alpha * A' B' + beta * C`` with ``A' = A^T`` when ``transA`` and
  ``B' = B^T`` when ``transB``; ``W = B'`` (the stored ``B`` transposed back when ``transB``).
  ``alpha`` and ``beta`` are kept by the rewrite; the rows of ``X`` are those of ``A'``.
- ``Conv(X, W, b)`` with ``group = 1``: the kernel ``C_out x C_in x k1 x ... x kd`` reshaped to
  ``C_out x (C_in k1 ... kd)`` and transposed, so ``K = C_in k1 ... kd`` and ``N = C_out``; the
  rows of ``X`` are the receptive-field patches (im2col, see ``statistics.py``).

A node is left alone, with the reason, when its weight is not a constant initializer (run
``Normalize`` first), is a graph input (it can be overridden at run time), feeds other nodes too
(factoring it for one would change or duplicate it for the others), is not floating point, or
is smaller than ``min_size``; when it is a grouped Conv; when the constant is the left operand of
a MatMul; when it is a ``transA`` Gemm below opset 11; or when the node is excluded by name.
Only nodes of the main graph are factored; those inside ``If`` / ``Loop`` / ``Scan`` bodies are
listed as left alone, with the reason.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import onnx_ir as ir

from onnx_compress.passes.gram import conv_attributes
from onnx_compress.passes.lowrank.settings import LowRankSettings

__all__ = ["Target", "Skipped", "find_targets", "FLOAT_TYPES"]

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16})

Kind = Literal["matmul", "gemm", "conv"]


@dataclasses.dataclass
class Target:
    """A node that can be factored: ``Y = X W`` with ``W`` of shape (k, n)."""

    node: ir.Node
    kind: Kind
    weight: ir.Value
    input: ir.Value
    k: int
    n: int

    @property
    def name(self) -> str:
        return str(self.node.name or self.node.outputs[0].name)

    def matrix(self) -> np.ndarray:
        """``W`` as a float64 K x N array (a new array; the stored tensor is never written)."""
        stored = np.asarray(self.weight.const_value.numpy(), dtype=np.float64)  # type: ignore[union-attr]
        if self.kind == "conv":
            return stored.reshape(stored.shape[0], -1).T
        if self.kind == "gemm" and self.node.attributes.get_int("transB", 0):
            return stored.T
        return stored

    def statistics_key(self) -> tuple[object, ...]:
        """Layers with equal keys see the same rows of X (Q, K and V projections of one input)."""
        if self.kind == "conv":
            return (self.input.name, "conv", conv_attributes(self.node))
        transposed = self.kind == "gemm" and bool(self.node.attributes.get_int("transA", 0))
        return (self.input.name, "transposed" if transposed else "rows")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A node of a factorable op type that was left alone, and why."""

    node: str
    op_type: str
    weight: str
    reason: str


def _weight_problem(graph: ir.Graph, value: ir.Value | None) -> str | None:
    if value is None:
        return "it has no weight input"
    if value.const_value is None or not value.is_initializer():
        return "its weight is not a constant initializer (computed at run time, or run Normalize first)"
    if value.is_graph_input():
        return f"its weight {value.name!r} is also a graph input and can be overridden at run time"
    if value.is_graph_output():
        return f"its weight {value.name!r} is also a graph output"
    if len(value.uses()) > 1:
        return f"its weight {value.name!r} is shared with {len(value.uses()) - 1} other node(s)"
    if value.const_value.dtype not in FLOAT_TYPES:
        return f"its weight is {value.const_value.dtype.name}, not floating point"
    if not np.all(np.isfinite(value.const_value.numpy())):
        return f"its weight {value.name!r} holds NaN or infinite values"
    return None


def _classify(graph: ir.Graph, node: ir.Node, opset: int) -> tuple[Target | None, str]:
    """A Target, or None and the reason the node is left alone."""
    op = node.op_type
    if op not in ("MatMul", "Gemm", "Conv"):
        return None, f"op {op} is not factored"
    inputs = list(node.inputs)
    if len(inputs) < 2:
        return None, "it has no weight input"
    x, w = inputs[0], inputs[1]
    if op == "MatMul" and (w is None or w.const_value is None) and x is not None and x.const_value is not None:
        return None, "the constant is the left operand (W @ X), which is not supported"
    problem = _weight_problem(graph, w)
    if problem:
        return None, problem
    shape = w.const_value.shape.numpy()  # type: ignore[union-attr]
    if op == "Conv":
        group = node.attributes.get_int("group", 1)
        if group != 1:
            return None, f"it is a grouped convolution (group={group}); only group=1 is factored"
        if len(shape) < 3:
            return None, f"its kernel has shape {list(shape)}"
        return Target(node, "conv", w, x, int(math.prod(shape[1:])), int(shape[0])), ""  # type: ignore[arg-type]
    if len(shape) != 2:
        return None, f"its weight has shape {list(shape)}, not a 2-D matrix"
    if op == "MatMul":
        return Target(node, "matmul", w, x, int(shape[0]), int(shape[1])), ""  # type: ignore[arg-type]
    if node.attributes.get_int("transA", 0) and opset < 11:
        return None, "a transA Gemm is factored into a Gemm without C, which needs opset >= 11 " \
                     "(run Normalize(min_opset=11) first)"
    k, n = (shape[1], shape[0]) if node.attributes.get_int("transB", 0) else (shape[0], shape[1])
    return Target(node, "gemm", w, x, int(k), int(n)), ""  # type: ignore[arg-type]


def find_targets(graph: ir.Graph, settings: LowRankSettings, opset: int = 18) -> tuple[list[Target], list[Skipped]]:
    """The nodes of ``settings.op_types`` to factor, and those left alone with their reasons.

    ``opset`` is the model's default-domain opset (a transA Gemm needs >= 11).
    """
    targets: list[Target] = []
    skipped: list[Skipped] = []
    excluded = set(settings.exclude)
    for node in graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in settings.op_types:
            continue
        name = str(node.name or node.outputs[0].name)
        weight = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] is not None else None
        weight_name = str(weight.name) if weight is not None else ""
        if name in excluded:
            skipped.append(Skipped(name, node.op_type, weight_name, "excluded by the 'exclude' setting"))
            continue
        target, reason = _classify(graph, node, opset)
        if target is None:
            skipped.append(Skipped(name, node.op_type, weight_name, reason))
            continue
        size = target.k * target.n
        if size < settings.min_size:
            skipped.append(Skipped(name, node.op_type, weight_name,
                                   f"its weight has {size} elements, fewer than min_size={settings.min_size}"))
            continue
        targets.append(target)
    for anchor in graph:
        for attr in anchor.attributes.values():
            bodies = [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else \
                list(attr.as_graphs()) if attr.type == ir.AttributeType.GRAPHS else []
            for body in bodies:
                for node in ir.traversal.RecursiveGraphIterator(body):
                    if node.domain not in ("", "ai.onnx") or node.op_type not in settings.op_types:
                        continue
                    weight = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] is not None else None
                    skipped.append(Skipped(str(node.name or node.outputs[0].name), node.op_type,
                                           str(weight.name) if weight is not None else "",
                                           f"inside the body of {anchor.op_type} '{anchor.name}': low-rank "
                                           "factoring rewrites main-graph nodes only"))
    return targets, skipped
