"""Model statistics: parameters, multiply-accumulates (MACs), size on disk, op histogram.

Parameters
    The number of weight elements stored in initializers (and Constant nodes) of floating or
    quantized integer type. int32/int64 tensors are shapes, axes and indices, not weights, and
    are not counted. A 4-bit ``MatMulNBits`` weight counts its ``K x N`` logical elements, not
    its packed bytes.
MACs
    Multiply-accumulates of one forward pass at batch ``batch`` (default 1), from shapes that
    ONNX shape inference resolves (:mod:`onnx_compress.shapes`):

    - Conv / QLinearConv / ConvInteger: ``prod(Y.shape) * prod(W.shape[1:])``
      (``W.shape[1] = C_in / group`` so grouped and depthwise convs count right);
    - ConvTranspose: ``prod(X.shape) * prod(W.shape[1:])``;
    - Gemm: ``M * N * K``; MatMul / MatMulInteger / QLinearMatMul / MatMulNBits and the
      com.microsoft fused MatMuls: ``prod(Y.shape) * K``.

    When static inference leaves shapes of such nodes unknown, the model is run once in ONNX
    Runtime on synthetic inputs to measure them (:func:`onnx_compress.shapes.measured_shapes`);
    nodes whose shapes stay unknown are listed in ``macs_unknown_nodes`` rather than guessed. Elementwise ops, pooling and normalization are not counted (by convention,
    as in most MAC counters). Symbolic dimensions other than the batch axis (a transformer's
    sequence length) need a size in ``dims``.
Size
    Bytes on disk of the model file plus its external data files; for an in-memory model, the
    size it would have when saved.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Mapping

import onnx
import onnx_ir as ir

from onnx_compress.data import input_specs
from onnx_compress.model_io import load_model, needs_file, model_files, weights_nbytes
from onnx_compress.table import format_table, human_bytes, human_count
from onnx_compress.shapes import Shape, infer_value_shapes, measured_shapes

__all__ = ["ModelStats", "model_stats", "count_params", "count_macs", "op_histogram", "op_key", "size_on_disk"]

_INDEX_DTYPES = {ir.DataType.INT32, ir.DataType.INT64, ir.DataType.BOOL, ir.DataType.STRING}


@dataclasses.dataclass(frozen=True)
class ModelStats:
    """What ``onnx-compress inspect`` prints."""

    inputs: list[str]
    outputs: list[str]
    params: int
    macs: int
    macs_unknown_nodes: list[str]
    size_bytes: int
    ops: dict[str, int]
    opsets: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def table(self, title: str, batch: int) -> str:
        """What ``onnx-compress inspect`` prints: inputs, outputs, params, MACs (at ``batch``), size,
        opsets, the nodes whose MACs are unknown, then the op histogram."""
        rows: list[list[object]] = [
            ["inputs", "; ".join(self.inputs)],
            ["outputs", "; ".join(self.outputs)],
            ["params", f"{self.params:,} ({human_count(self.params)})"],
            [f"MACs (batch {batch})", f"{self.macs:,} ({human_count(self.macs)})"],
            ["size", f"{self.size_bytes:,} bytes ({human_bytes(self.size_bytes)})"],
            ["opsets", ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in self.opsets.items())],
        ]
        if self.macs_unknown_nodes:
            rows.append(["MACs unknown for", ", ".join(self.macs_unknown_nodes[:10])
                         + (" ..." if len(self.macs_unknown_nodes) > 10 else "")])
        return (format_table([title, ""], rows, numeric=False) + "\n\n"
                + format_table(["op", "count"], [[op, n] for op, n in self.ops.items()]))

    def change_table(self, after: ModelStats, title: str, batch: int, gzip: tuple[int, int] | None = None) -> str:
        """Params, MACs (at ``batch``), size (and the ``gzip`` sizes, when known) of this model and of
        ``after``, with the relative change; then a note when MACs are unknown for some nodes."""
        rows = [("params", self.params, after.params, "{:,}".format),
                (f"MACs (batch {batch})", self.macs, after.macs, "{:,}".format),
                ("size", self.size_bytes, after.size_bytes, human_bytes), *([("gzip size", *gzip, human_bytes)] if gzip and all(gzip) else [])]
        text = format_table([title, "before", "after", "change"], [
            [name, show(old), show(new), f"{(new - old) / old:+.1%}" if old else ""] for name, old, new, show in rows])
        if self.macs_unknown_nodes:
            text += (f"\nMACs unknown for {len(self.macs_unknown_nodes)} nodes with symbolic shapes: "
                     "give their sizes with --dim NAME=SIZE")
        return text


def op_key(node: ir.Node | onnx.NodeProto) -> str:
    """``Op`` in the default ONNX domain, ``domain::Op`` elsewhere (``com.microsoft::QGemm``)."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def op_histogram(model: ir.Model) -> dict[str, int]:
    """Number of nodes per op type (``domain::Op`` outside the default domain), subgraphs included."""
    counts = collections.Counter(op_key(node) for node in ir.traversal.RecursiveGraphIterator(model.graph))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def count_params(model: ir.Model) -> int:
    """Weight elements (see the module docstring)."""
    nbits_logical: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "MatMulNBits" and len(node.inputs) > 1 and node.inputs[1] is not None:
            k = node.attributes.get_int("K", 0)
            n = node.attributes.get_int("N", 0)
            nbits_logical[str(node.inputs[1].name)] = k * n
    total = 0
    for graph in model.graphs():
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if tensor is None or tensor.dtype in _INDEX_DTYPES:
                continue
            total += nbits_logical.get(name) or math.prod(tensor.shape.numpy())
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                tensor = attr.as_tensor()
                if tensor.dtype not in _INDEX_DTYPES:
                    total += math.prod(tensor.shape.numpy())
    return int(total)


def _known(shape: Shape | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _node_macs(node: ir.Node, shapes: Mapping[str, Shape]) -> int | None:
    """MACs of one node, 0 for ops that are not counted, None when shapes are unknown."""

    def shape(index: int, outputs: bool = False) -> Shape | None:
        values = node.outputs if outputs else node.inputs
        if index >= len(values) or values[index] is None:
            return None
        return shapes.get(str(values[index].name))

    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = shape(3 if op == "QLinearConv" else 1)
        y = shape(0, outputs=True)
        if not (_known(w) and _known(y)):
            return None
        return math.prod(y) * math.prod(w[1:])  # type: ignore[index,arg-type]
    if op == "ConvTranspose":
        w, x = shape(1), shape(0)
        if not (_known(w) and _known(x)):
            return None
        return math.prod(x) * math.prod(w[1:])  # type: ignore[index,arg-type]
    if op == "Gemm":
        a, y = shape(0), shape(0, outputs=True)
        if not (_known(a) and _known(y)) or len(a) != 2:  # type: ignore[arg-type]
            return None
        k = a[0] if node.attributes.get_int("transA", 0) else a[1]  # type: ignore[index]
        return math.prod(y) * int(k)  # type: ignore[arg-type]
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "DynamicQuantizeMatMul",
              "MatMulIntegerToFloat"):
        a, y = shape(0), shape(0, outputs=True)
        if not (_known(a) and _known(y)) or not a:
            return None
        k = a[-2] if (op == "FusedMatMul" and node.attributes.get_int("transA", 0) and len(a) > 1) else a[-1]  # type: ignore[index]
        return math.prod(y) * int(k)  # type: ignore[arg-type]
    if op == "MatMulNBits":
        y = shape(0, outputs=True)
        if not _known(y):
            return None
        return math.prod(y) * node.attributes.get_int("K", 0)  # type: ignore[arg-type]
    return 0


def count_macs(
    model: ir.Model, *, batch: int = 1, dims: Mapping[str, int] | None = None
) -> tuple[int, list[str]]:
    """(MACs, names of MAC-bearing nodes whose shapes were unknown); see the module docstring."""
    shapes = dict(infer_value_shapes(model, batch=batch, dims=dims))
    unresolved = [node for node in model.graph if _node_macs(node, shapes) is None]
    if unresolved:
        # static inference stopped somewhere: measure the missing shapes by running the model once
        names = {str(v.name) for node in unresolved for v in (*node.inputs, *node.outputs) if v is not None}
        shapes.update(measured_shapes(model, names, batch=batch, dims=dims))
    total = 0
    unknown: list[str] = []
    for node in model.graph:  # subgraph MACs depend on control flow: not counted
        macs = _node_macs(node, shapes)
        if macs is None:
            unknown.append(str(node.name or node.op_type))
        else:
            total += macs
    return int(total), unknown


def size_on_disk(path: str | os.PathLike[str]) -> int:
    """Bytes of a model file plus its external data files."""
    return sum(f.stat().st_size for f in model_files(path))


def serialized_size(model: ir.Model) -> int:
    """Bytes the model takes when saved (exact below the protobuf limit, weights + graph above)."""
    if not needs_file(model):
        return int(ir.serde.serialize_model(model).ByteSize())
    return weights_nbytes(model)  # external data dominates; the graph itself is negligible


def model_stats(
    model: ir.Model | str | os.PathLike[str],
    *,
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
) -> ModelStats:
    """All statistics of a model given as a path or an ``onnx_ir.Model``."""
    if isinstance(model, ir.Model):
        ir_model = model
        size = serialized_size(model)
    else:
        ir_model = load_model(model)
        size = size_on_disk(model)
    macs, unknown = count_macs(ir_model, batch=batch, dims=dims)
    return ModelStats(
        inputs=[spec.describe() for spec in input_specs(ir_model)],
        outputs=[
            f"{value.name}: {value.dtype.numpy().name if value.dtype else '?'}"
            f"[{'x'.join(str(d) for d in value.shape) if value.shape is not None else '?'}]"
            for value in ir_model.graph.outputs
        ],
        params=count_params(ir_model),
        macs=macs,
        macs_unknown_nodes=unknown,
        size_bytes=size,
        ops=op_histogram(ir_model),
        opsets=dict(ir_model.opset_imports),
    )
