"""What a model offers to quantize: candidate nodes per mode, already-quantized ops, model kind.

A *candidate* is a node whose weight is a float32 initializer that the mode's ONNX Runtime
quantizer can convert:

==============  =====================================================================
mode            op types (weight input)
==============  =====================================================================
static          Conv, ConvTranspose (W), Gemm, MatMul (B, 2-D)
dynamic         Conv (W), MatMul (B), Gemm (B; ONNX Runtime rewrites it as MatMul + Add),
                Gather (embedding table), Attention (weights), LSTM (W)
weight_only     MatMul (B, 2-D), Gemm (B, 2-D, rewritten as MatMul + Add), Gather (table)
fp16            every node with a float32 initializer input
==============  =====================================================================

Nodes inside ``If`` / ``Loop`` / ``Scan`` bodies are candidates too when their weight is an
initializer of their own graph or of an enclosing one: dynamic mode quantizes them (ONNX
Runtime's ``EnableSubgraph``); static and weight-only modes list them as ineligible, with the
reason (their ONNX Runtime tools do not descend into subgraphs), and fp16 converts main-graph
nodes only.

Models that already hold quantized ops (QuantizeLinear, QLinearConv, MatMulInteger,
MatMulNBits, ...) are reported as such: quantizing twice is refused.

*Transformer-like* (for the automatic choices): at least one Softmax, at least four MatMul
nodes with a weight, and a layer normalization (``LayerNormalization`` or the ReduceMean
pattern of older exports) or an attention Softmax (one fed, through element-wise and shape
ops, by a MatMul of two computed tensors: query x key; tf2onnx writes Keras' LayerNorm with
``GlobalAveragePool``, which a CNN has too, so the attention itself is the signal there).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterator

import onnx

from onnx_compress.stats import op_key

__all__ = ["Candidate", "ModelAnalysis", "analyze", "subgraph_count", "SUBGRAPH_MODES", "QUANTIZED_OP_TYPES", "WEIGHT_ONLY_OP_TYPES", "WEIGHT_OP_TYPES"]

#: op types that only appear in models that are already quantized
QUANTIZED_OP_TYPES: frozenset[str] = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm",
    "MatMulNBits", "GatherBlockQuantized", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLSTM",
    "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSoftmax", "QLinearWhere", "MatMulBnb4",
})

#: quantized op types that hold 4-bit weights and take float activations: a model holding only
#: these may still have its float nodes quantized (4-bit embeddings + int8 MatMuls)
WEIGHT_ONLY_OP_TYPES: frozenset[str] = frozenset({"MatMulNBits", "GatherBlockQuantized"})

#: mode -> {op type: index of the weight input}
WEIGHT_OP_TYPES: dict[str, dict[str, int]] = {
    "static": {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1},
    "dynamic": {"Conv": 1, "MatMul": 1, "Gemm": 1, "Gather": 0, "Attention": 1, "LSTM": 1},
    "weight_only": {"MatMul": 1, "Gemm": 1, "Gather": 0},
}

_FLOAT = onnx.TensorProto.FLOAT


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A node that can be quantized, with its weight's size."""

    name: str
    op_type: str
    weight: str
    weight_elements: int
    weight_bytes: int  # float32 bytes now

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelAnalysis:
    """The facts the pass decides from (see the module docstring)."""

    op_counts: dict[str, int]
    candidates: dict[str, list[Candidate]]  # mode -> candidates
    ineligible: dict[str, list[str]]  # mode -> "node: reason" for weight ops left out
    quantized_ops: dict[str, int]
    transformer_like: bool
    transformer_reason: str
    float_initializer_bytes: int
    node_names: frozenset[str]

    def describe_ops(self, limit: int = 8) -> str:
        items = sorted(self.op_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"{op} x{n}" for op, n in items[:limit])
        return text + (", ..." if len(items) > limit else "")


def _is_weight_op(node: onnx.NodeProto, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "ai.onnx", "com.microsoft")


def _gemm_reason(node: onnx.NodeProto) -> str:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0):
        return "Gemm with transA=1"
    return ""


#: modes whose ONNX Runtime tool quantizes nodes inside control-flow subgraphs
SUBGRAPH_MODES: frozenset[str] = frozenset({"dynamic"})


def _walk(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto], graph_inputs: set[str],
          where: str) -> Iterator[tuple[onnx.NodeProto, dict[str, onnx.TensorProto], set[str], str]]:
    """Every node with the initializers and graph inputs visible to it and "" (main graph) or
    the control-flow node whose body holds it."""
    for node in graph.node:
        yield node, initializers, graph_inputs, where
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else \
                list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
            for body in bodies:
                shadowed = {value.name for value in body.input}  # a body's inputs hide outer names
                inner = {name: t for name, t in initializers.items() if name not in shadowed}
                inner.update({t.name: t for t in body.initializer})
                yield from _walk(body, inner, (graph_inputs - set(inner)) | shadowed, f"{node.op_type} '{node.name}'")


def subgraph_count(model: onnx.ModelProto) -> int:
    """Nodes inside control-flow bodies."""
    return sum(1 for _, _, _, where in _walk(model.graph, {}, set(), "") if where)


def analyze(model: onnx.ModelProto) -> ModelAnalysis:
    """Analyze ``model``, subgraphs included (weights may be external: only dims are read)."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    graph_inputs = {value.name for value in graph.input}
    walked = list(_walk(graph, initializers, graph_inputs, ""))
    op_counts = collections.Counter(op_key(node) for node, *_ in walked)
    quantized = {op: n for op, n in op_counts.items() if op.split("::")[-1] in QUANTIZED_OP_TYPES}

    candidates: dict[str, list[Candidate]] = {mode: [] for mode in (*WEIGHT_OP_TYPES, "fp16")}
    ineligible: dict[str, list[str]] = {mode: [] for mode in (*WEIGHT_OP_TYPES, "fp16")}
    for node, visible, visible_inputs, where in walked:
        for mode, table in WEIGHT_OP_TYPES.items():
            index = table.get(node.op_type)
            if index is None or not _is_weight_op(node, node.op_type):
                continue
            if index >= len(node.input) or not node.input[index]:
                continue
            weight = node.input[index]
            tensor = visible.get(weight)
            reason = ""
            if tensor is None or weight in visible_inputs:
                # activation x activation (attention scores) or a weight fed at run time: not a weight op
                continue
            if where and mode not in SUBGRAPH_MODES:
                reason = (f"inside the body of {where}: ONNX Runtime's {mode} quantizer does not descend into "
                          "subgraphs (dynamic mode does)")
            elif tensor.data_type != _FLOAT:
                reason = f"weight {weight} is {onnx.TensorProto.DataType.Name(tensor.data_type)}, not FLOAT"
            elif node.op_type in ("MatMul", "Gemm") and len(tensor.dims) != 2 and mode != "dynamic":
                reason = f"weight {weight} has rank {len(tensor.dims)}, not 2"
            elif node.op_type == "Gemm":
                reason = _gemm_reason(node)
            elif node.op_type == "Gather" and len(tensor.dims) != 2:
                reason = f"table {weight} has rank {len(tensor.dims)}, not 2"
            if reason:
                ineligible[mode].append(f"{node.name}: {reason}")
                continue
            elements = math.prod(int(d) for d in tensor.dims)
            candidates[mode].append(Candidate(node.name, node.op_type, weight, elements, elements * 4))
        float_inputs = [name for name in node.input if name in visible and visible[name].data_type == _FLOAT]
        if float_inputs and not where:
            elements = sum(math.prod(int(d) for d in visible[name].dims) for name in float_inputs)
            candidates["fp16"].append(Candidate(node.name, node.op_type, float_inputs[0], elements, elements * 4))

    float_bytes = sum(math.prod(int(d) for d in t.dims) * 4 for t in graph.initializer if t.data_type == _FLOAT)
    transformer, reason = _transformer_like(graph, op_counts, initializers)
    return ModelAnalysis(
        op_counts=dict(op_counts),
        candidates=candidates,
        ineligible=ineligible,
        quantized_ops=quantized,
        transformer_like=transformer,
        transformer_reason=reason,
        float_initializer_bytes=float_bytes,
        node_names=frozenset(node.name for node, *_ in walked),
    )


def _transformer_like(graph: onnx.GraphProto, op_counts: collections.Counter, initializers: dict) -> tuple[bool, str]:
    softmax = op_counts.get("Softmax", 0) + op_counts.get("com.microsoft::Attention", 0) \
        + op_counts.get("com.microsoft::MultiHeadAttention", 0)
    weight_matmuls = sum(
        1 for node in graph.node
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in initializers
    )
    norms = op_counts.get("LayerNormalization", 0) + op_counts.get("com.microsoft::SkipLayerNormalization", 0) \
        + op_counts.get("com.microsoft::LayerNormalization", 0) + op_counts.get("ReduceMean", 0) \
        + op_counts.get("com.microsoft::SimplifiedLayerNormalization", 0)
    attention = _attention_softmaxes(graph, initializers)
    facts = f"{softmax} attention softmax, {weight_matmuls} weight MatMul/Gemm, {norms} layer norms"
    if norms == 0 and attention:
        facts += f", {attention} Softmax fed by query x key MatMuls"
    return (softmax >= 1 and weight_matmuls >= 4 and (norms >= 1 or attention >= 1)), facts


#: ops between the query x key MatMul and its Softmax in the exports seen (scale, mask, head reshapes)
_SCORE_PATH_OPS = frozenset({"Add", "Mul", "Div", "Sub", "Where", "Squeeze", "Unsqueeze", "Reshape", "Transpose",
                             "Cast"})


def _attention_softmaxes(graph: onnx.GraphProto, initializers: dict, depth: int = 8) -> int:
    """Softmax nodes fed (within ``depth`` element-wise/shape ops) by a MatMul of two computed tensors."""
    producers = {out: node for node in graph.node for out in node.output}
    found = 0
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        frontier, seen = list(node.input[:1]), set()
        for _ in range(depth):
            following: list[str] = []
            for name in frontier:
                producer = producers.get(name)
                if producer is None or name in seen:
                    continue
                seen.add(name)
                if producer.op_type == "MatMul" and not any(i in initializers for i in producer.input):
                    found += 1
                    following = []
                    break
                if producer.op_type in _SCORE_PATH_OPS:
                    following += [i for i in producer.input if i and i not in initializers]
            else:
                frontier = following
                continue
            break
    return found
