"""Find the encoder layers of a transformer in an ONNX graph: attention heads, FFN, layer boundaries.

What is found, in the three graph forms the project meets (the plain export of PyTorch's
dynamo and TorchScript exporters, tf2onnx's graph of a Keras encoder, and the graph after the
``fuse`` pass):

- **Attention blocks.** Plain form: every ``Softmax``; backwards from it to the score
  ``MatMul`` (two computed inputs) and from its two inputs to the Q and K projections (a
  ``MatMul`` with a constant 2-D weight, through ``Reshape`` / ``Transpose`` / ``Unsqueeze`` /
  ``Squeeze`` / scalar ``Mul`` / ``Div`` / constant ``Add``); forwards to the ``MatMul`` that
  applies the probabilities to V and from its other input back to the V projection; from its
  output forwards to the output projection. Fused form: ``MultiHeadAttention`` (com.microsoft)
  whose query, key and value are projection outputs; ``num_heads`` is its attribute. The head
  dimension comes from the head-split ``Reshape`` (its last shape entry), the head count from
  the projection width. Packed ``Attention`` nodes are refused (prune before ``fuse``).
- **Head rewrites.** Every ``Reshape`` between the projections and the output projection whose
  target shape is a constant (or a ``Concat`` with constant pieces, possibly behind a
  ``Cast``) is classified: a split (last entry ``head_dim``: the entry before it, when it is
  the head count, becomes the new head count) or a merge (last entry ``heads * head_dim``:
  becomes ``new_heads * head_dim``); ``-1`` entries and shapes read from ``Shape`` adapt by
  themselves. Anything else carrying the head count is refused with the node's name.
- **FFN blocks.** A projection ``MatMul`` (constant weight ``[hidden, F]``) whose output reaches
  exactly one ``MatMul`` with a constant weight ``[F, N]`` through element-wise ops only (bias
  ``Add``, GELU as ``Div``/``Erf``/``Add``/``Mul``, ``Gelu``/``BiasGelu``/``FastGelu``, ``Relu``,
  ``Reshape`` that keeps ``F`` last, ...). Constants on the way are scalars or length-``F``
  rows (sliced with the neurons).
- **Layers.** Attention blocks and FFNs in graph order, paired; layer ``i``'s input is the value
  its Q/K/V projections read; its output is the next layer's input, and for the last layer the
  value reached from its FFN output through the same op sequence (residual ``Add`` and the norm,
  decomposed or not) that joins the layer before it to its successor.

Limits: encoder self-attention with separate (or ``MultiHeadAttention``-fused) Q/K/V
projections; every head the same size; weights in float32 initializers (run ``Normalize``
first). A layer whose attention or FFN does not match is reported with the reason and left
alone; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from onnx_compress.table import format_table

__all__ = [
    "AttentionBlock",
    "EncoderLayer",
    "FfnBlock",
    "Projection",
    "ShapeRewrite",
    "TransformerStructure",
    "find_structure",
    "prepare",
    "structure_of",
]

_DEFAULT = ("", "ai.onnx")
_MS = "com.microsoft"
#: ops a value passes through unchanged in its last axes (walked when looking for projections)
_VIEW_OPS = {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity", "Cast", "Dropout"}
#: element-wise ops allowed inside an FFN between its two projections
_FFN_UNARY = {"Erf", "Tanh", "Sigmoid", "Relu", "Identity", "Cast", "Neg", "Sqrt", "Abs", "Exp", "Softplus",
              "Gelu", "Dropout", "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Celu", "Mish", "HardSwish"}
_FFN_BINARY = {"Add", "Sub", "Mul", "Div", "Pow"}
_FFN_MS = {"Gelu", "FastGelu", "BiasGelu", "QuickGelu"}


# ------------------------------------------------------------------------------ data


@dataclasses.dataclass
class Projection:
    """A ``MatMul`` with a constant 2-D weight and, when present, the ``Add`` of its bias row."""

    matmul: ir.Node
    bias_add: ir.Node | None = None
    bias_index: int = 1  # input index of the bias constant in ``bias_add``

    @property
    def weight(self) -> ir.Value:
        return self.matmul.inputs[1]  # type: ignore[return-value]

    @property
    def input(self) -> ir.Value:
        return self.matmul.inputs[0]  # type: ignore[return-value]

    @property
    def output(self) -> ir.Value:
        """The projection's result (after its bias, when there is one)."""
        node = self.bias_add if self.bias_add is not None else self.matmul
        return node.outputs[0]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.const_value.shape)  # type: ignore[union-attr,return-value]

    @property
    def name(self) -> str:
        return str(self.matmul.name or self.matmul.op_type)


@dataclasses.dataclass
class ShapeRewrite:
    """A ``Reshape`` whose constant target shape must change with the cut: ``{position: kind}``,
    kind ``heads`` (entry = the head count) or ``width`` (entry = heads * head_dim, or the FFN width)."""

    reshape: ir.Node
    positions: dict[int, str]


@dataclasses.dataclass
class AttentionBlock:
    """One self-attention block: projections, head layout, and what changes with the head count."""

    q: Projection
    k: Projection
    v: Projection
    o: Projection
    heads: int
    head_dim: int
    core: ir.Node  # the Softmax, or the MultiHeadAttention node
    rewrites: list[ShapeRewrite] = dataclasses.field(default_factory=list)

    @property
    def fused(self) -> bool:
        return self.core.op_type == "MultiHeadAttention"

    @property
    def name(self) -> str:
        return str(self.core.name or self.core.op_type)


@dataclasses.dataclass
class FfnBlock:
    """A feed-forward block: ``up`` -> element-wise ops -> ``down``."""

    up: Projection
    down: Projection
    width: int
    #: (node, input index) of every constant row on the way that is sliced with the neurons
    rows: list[tuple[ir.Node, int]] = dataclasses.field(default_factory=list)
    rewrites: list[ShapeRewrite] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.up.name


@dataclasses.dataclass
class EncoderLayer:
    """One encoder layer; ``input``/``output`` are its residual-stream values (None when unknown)."""

    index: int
    attention: AttentionBlock | None
    ffn: FfnBlock | None
    input: ir.Value | None = None
    output: ir.Value | None = None
    #: why heads / FFN / the whole layer cannot be cut (empty when they can)
    attention_reason: str = ""
    ffn_reason: str = ""
    depth_reason: str = ""


@dataclasses.dataclass
class TransformerStructure:
    """The encoder layers found in a graph and what was refused, with reasons."""

    layers: list[EncoderLayer]
    form: str  # "plain", "fused" (MultiHeadAttention) or "none"
    notes: list[str] = dataclasses.field(default_factory=list)

    def table(self) -> str:
        """Per encoder layer: heads x head size, FFN width, whether it can be removed, what was
        refused and why; then the notes."""
        rows = [[layer.index, f"{layer.attention.heads} x {layer.attention.head_dim}" if layer.attention else "",
                 layer.ffn.width if layer.ffn else "", "yes" if not layer.depth_reason else "no",
                 "; ".join(r for r in (layer.attention_reason, layer.ffn_reason, layer.depth_reason) if r)]
                for layer in self.layers]
        text = format_table([f"encoder layer ({self.form} graph)", "heads x size", "FFN width", "removable",
                             "refused"], rows)
        return text + "".join(f"\nnote: {note}" for note in self.notes)

    def as_dict(self) -> dict[str, object]:
        return {
            "form": self.form,
            "layers": [
                {"index": layer.index,
                 "heads": layer.attention.heads if layer.attention else None,
                 "head_dim": layer.attention.head_dim if layer.attention else None,
                 "ffn": layer.ffn.width if layer.ffn else None,
                 "removable": not layer.depth_reason,
                 "attention_reason": layer.attention_reason, "ffn_reason": layer.ffn_reason,
                 "depth_reason": layer.depth_reason}
                for layer in self.layers
            ],
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------------------ helpers


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _node_name(node: ir.Node) -> str:
    return str(node.name or node.op_type)


def _consumers(value: ir.Value) -> list[ir.Node]:
    return list(dict.fromkeys(use.node for use in value.uses()))


def _projection_at(node: ir.Node | None) -> Projection | None:
    """``node`` as a projection: a MatMul with a float constant 2-D weight, or the bias Add after one."""
    if node is None or node.domain not in _DEFAULT:
        return None
    if node.op_type == "Add":
        for index in (0, 1):
            bias = _const(node.inputs[index])
            other = node.inputs[1 - index]
            if bias is None or other is None or bias.ndim != 1:
                continue
            inner = _projection_at(other.producer())
            if inner is not None and inner.bias_add is None and bias.shape[0] == inner.shape[1] \
                    and len(other.uses()) == 1:
                return Projection(inner.matmul, node, index)
        return None
    if node.op_type != "MatMul" or len(node.inputs) != 2:
        return None
    weight = _const(node.inputs[1])
    if weight is None or weight.ndim != 2 or weight.dtype != np.float32 or _const(node.inputs[0]) is not None:
        return None
    return Projection(node)


def _with_bias(projection: Projection) -> Projection:
    """The projection with the bias ``Add`` that follows its MatMul, when its only consumer is one."""
    if projection.bias_add is not None:
        return projection
    uses = projection.matmul.outputs[0].uses()
    if len(uses) == 1:
        found = _projection_at(uses[0].node)
        if found is not None and found.matmul is projection.matmul:
            return found
    return projection


def _walk_back_to_projection(value: ir.Value | None, limit: int = 12) -> Projection | None:
    """Follow ``value`` backwards through view ops and constant scalars to a projection."""
    for _ in range(limit):
        if value is None:
            return None
        node = value.producer()
        if node is None:
            return None
        found = _projection_at(node)
        if found is not None:
            return _with_bias(found)
        if node.domain not in _DEFAULT:
            return None
        if node.op_type in _VIEW_OPS:
            value = node.inputs[0]
            continue
        if node.op_type in ("Mul", "Div", "Add", "Sub") and len(node.inputs) == 2:
            computed = [v for v in node.inputs if v is not None and _const(v) is None]
            if len(computed) != 1:
                return None
            value = computed[0]
            continue
        return None
    return None


def _walk_forward(value: ir.Value, stop: set[str], limit: int = 12) -> ir.Node | None:
    """The first node of type in ``stop`` reached from ``value`` through single-consumer view ops."""
    for _ in range(limit):
        consumers = [n for n in _consumers(value) if not (n.op_type in ("Shape", "IsNaN") and n.domain in _DEFAULT)]
        if len(consumers) != 1:
            return None
        node = consumers[0]
        if node.op_type in stop and node.domain in _DEFAULT:
            return node
        if node.domain in _DEFAULT and node.op_type in _VIEW_OPS | {"IsNaN", "Where"}:
            value = node.outputs[0]
            continue
        return None
    return None


def _computed_inputs(node: ir.Node) -> list[ir.Value]:
    return [v for v in node.inputs if v is not None and _const(v) is None]


def _walk_back_to(value: ir.Value | None, op_type: str, limit: int = 12) -> ir.Node | None:
    """The one ``op_type`` node upstream of ``value`` through element-wise and view ops (an
    additive or multiplicative mask joining on the way is a branch that does not reach one)."""
    if value is None or limit <= 0:
        return None
    node = value.producer()
    if node is None:
        return None
    if node.op_type == op_type and node.domain in _DEFAULT:
        return node
    if node.domain not in _DEFAULT or node.op_type not in _VIEW_OPS | {"Mul", "Div", "Add", "Sub", "Where"}:
        return None
    found = {id(n): n for n in (_walk_back_to(v, op_type, limit - 1) for v in _computed_inputs(node))
             if n is not None}
    return next(iter(found.values())) if len(found) == 1 else None


# ------------------------------------------------------------------------------ shapes


@dataclasses.dataclass
class _ShapeEntries:
    values: list[int | None]  # None: computed at run time


def _shape_source(value: ir.Value | None) -> ir.Value | None:
    """Look through a ``Cast`` in front of a Reshape's shape input."""
    node = value.producer() if value is not None else None
    if node is not None and node.op_type == "Cast" and node.domain in _DEFAULT:
        return node.inputs[0]
    return value


def shape_entries(value: ir.Value | None) -> _ShapeEntries | None:
    """The entries of a Reshape target: constants where known, None where computed; None when
    the shape's length itself is unknown."""
    value = _shape_source(value)
    if value is None:
        return None
    const = _const(value)
    if const is not None:
        return _ShapeEntries([int(x) for x in const.reshape(-1)])
    node = value.producer()
    if node is not None and node.op_type == "Concat" and node.domain in _DEFAULT:
        entries: list[int | None] = []
        for piece in node.inputs:
            if piece is None:
                return None
            const = _const(piece)
            if const is not None:
                entries += [int(x) for x in const.reshape(-1)]
                continue
            shape = piece.shape
            if shape is None or len(shape) != 1 or not isinstance(shape[0], int):
                return None
            entries += [None] * shape[0]
        return _ShapeEntries(entries)
    shape = value.shape
    if shape is not None and len(shape) == 1 and isinstance(shape[0], int):
        return _ShapeEntries([None] * shape[0])
    return None


def _classify_attention_reshape(node: ir.Node, heads: int, head_dim: int) -> ShapeRewrite | str | None:
    """How a Reshape inside an attention block changes with the head count (None: it adapts)."""
    entries = shape_entries(node.inputs[1])
    if entries is None:
        return f"Reshape {_node_name(node)}: its target shape has an unknown length"
    values = entries.values
    width = heads * head_dim
    positions: dict[int, str] = {}
    if len(values) >= 2 and values[-1] == head_dim and values[-2] not in (0,):
        if values[-2] == heads:
            positions[len(values) - 2] = "heads"
    elif values and values[-1] == width and width != head_dim:
        positions[len(values) - 1] = "width"
    data_shape = node.inputs[0].shape if node.inputs[0] is not None else None
    leading = min(len(data_shape), len(values)) - 1 if data_shape is not None else 0
    for i, entry in enumerate(values):
        if i in positions or entry is None or entry in (-1, 1):
            continue
        if i < leading and data_shape is not None and data_shape[i] == entry:
            continue  # a leading axis (batch, sequence) passed through unchanged
        if entry == 0:
            return f"Reshape {_node_name(node)}: a 0 (copy) entry in its target shape {values}"
        if entry in (heads, width) and not (i == len(values) - 1 and entry == head_dim):
            return (f"Reshape {_node_name(node)}: target shape {values} carries the head count where the pass "
                    "does not expect it")
    return ShapeRewrite(node, positions) if positions else None


def _classify_ffn_reshape(node: ir.Node, width: int) -> ShapeRewrite | str | None:
    entries = shape_entries(node.inputs[1])
    if entries is None:
        return f"Reshape {_node_name(node)}: its target shape has an unknown length"
    values = entries.values
    if not values or values[-1] not in (width, -1, None):
        return f"Reshape {_node_name(node)}: target shape {values} does not keep the FFN width last"
    if any(v == width for v in values[:-1]) or any(v == 0 for v in values):
        return f"Reshape {_node_name(node)}: target shape {values} is not understood"
    return ShapeRewrite(node, {len(values) - 1: "width"}) if values[-1] == width else None


# ------------------------------------------------------------------------------ attention


def _closure(starts: Iterable[ir.Value], stop: set[int]) -> list[ir.Node]:
    """Nodes reachable forwards from ``starts``, not going past nodes whose id is in ``stop``."""
    seen: dict[int, ir.Node] = {}
    stack = [n for v in starts for n in _consumers(v)]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if id(node) in stop:
            continue
        for out in node.outputs:
            stack.extend(_consumers(out))
    return list(seen.values())


def _head_dim_from(projection: Projection) -> int | None:
    """The last entry of the first Reshape after the projection (the split's head_dim)."""
    value = projection.output
    for _ in range(6):
        consumers = [n for n in _consumers(value) if n.op_type != "Shape"]
        if len(consumers) != 1:
            return None
        node = consumers[0]
        if node.op_type == "Reshape" and node.domain in _DEFAULT:
            entries = shape_entries(node.inputs[1])
            if entries is None or not entries.values or entries.values[-1] in (None, -1, 0):
                return None
            return int(entries.values[-1])  # type: ignore[arg-type]
        if node.op_type in _VIEW_OPS or node.op_type in ("Mul", "Div", "Add"):
            value = node.outputs[0]
            continue
        return None
    return None


def _plain_attention(softmax: ir.Node) -> AttentionBlock | str:
    name = _node_name(softmax)
    scores = _walk_back_to(softmax.inputs[0], "MatMul")
    if scores is None or len(_computed_inputs(scores)) != 2:
        return f"Softmax {name}: no score MatMul (Q x K^T) before it"
    q = _walk_back_to_projection(scores.inputs[0])
    k = _walk_back_to_projection(scores.inputs[1])
    apply = _walk_forward(softmax.outputs[0], {"MatMul"})
    if apply is None or len(_computed_inputs(apply)) != 2:
        return f"Softmax {name}: no MatMul applying the probabilities to V after it"
    v = _walk_back_to_projection(apply.inputs[1])
    o_node = _walk_forward(apply.outputs[0], {"MatMul"})
    o = _projection_at(o_node)
    if q is None or k is None or v is None or o is None:
        missing = [n for n, p in (("Q", q), ("K", k), ("V", v), ("output", o)) if p is None]
        return f"Softmax {name}: the {'/'.join(missing)} projection(s) are not a MatMul with a constant weight"
    o = _with_bias(o)
    return _finish_attention(softmax, q, k, v, o, heads=None)


def _fused_attention(node: ir.Node) -> AttentionBlock | str:
    name = _node_name(node)
    if len(node.inputs) < 3 or any(node.inputs[i] is None for i in range(3)):
        return f"MultiHeadAttention {name}: packed Q/K/V inputs are not supported"
    if len(node.inputs) > 6 and any(v is not None for v in node.inputs[6:]):
        return f"MultiHeadAttention {name}: past key/value inputs are not supported"
    projections = [_projection_at(node.inputs[i].producer()) for i in range(3)]  # type: ignore[union-attr]
    out = _consumers(node.outputs[0])
    o = _projection_at(out[0]) if len(out) == 1 else None
    if any(p is None for p in projections) or o is None:
        return f"MultiHeadAttention {name}: Q/K/V/output are not MatMuls with constant weights"
    q, k, v = projections  # type: ignore[misc]
    heads = node.attributes.get_int("num_heads", 0)
    if not heads:
        return f"MultiHeadAttention {name}: no num_heads attribute"
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        bias = _const(node.inputs[3])
        if bias is None or bias.ndim != 1 or bias.shape[0] != 3 * q.shape[1]:  # type: ignore[union-attr]
            return f"MultiHeadAttention {name}: the Q/K/V bias is not a constant of 3 x the projection width"
    return _finish_attention(node, q, k, v, _with_bias(o), heads=heads)  # type: ignore[arg-type]


def _finish_attention(core: ir.Node, q: Projection, k: Projection, v: Projection, o: Projection,
                      heads: int | None) -> AttentionBlock | str:
    name = _node_name(core)
    width = v.shape[1]
    if q.shape[1] != width or k.shape[1] != width or o.shape[0] != width:
        return f"{core.op_type} {name}: Q/K/V/output widths differ ({q.shape}, {k.shape}, {v.shape}, {o.shape})"
    if len({id(q.matmul), id(k.matmul), id(v.matmul)}) != 3:
        return f"{core.op_type} {name}: Q, K and V are not three separate projections"
    for p in (q, k, v, o):
        if len(p.weight.uses()) != 1:
            return f"{core.op_type} {name}: the weight of {p.name} is shared with other nodes"
    block_nodes = _closure([q.output, k.output, v.output], stop={id(o.matmul)})
    if heads is None:
        dims = {_head_dim_from(p) for p in (q, k, v)}
        if len(dims) != 1 or None in dims:
            return f"{core.op_type} {name}: cannot read the head size from the head-split Reshapes"
        head_dim = int(dims.pop())  # type: ignore[arg-type]
        if width % head_dim:
            return f"{core.op_type} {name}: width {width} is not a multiple of the head size {head_dim}"
        heads = width // head_dim
    else:
        if width % heads:
            return f"{core.op_type} {name}: width {width} is not a multiple of num_heads {heads}"
        head_dim = width // heads
    rewrites: list[ShapeRewrite] = []
    shape_memo: dict[int, bool] = {}
    for node in block_nodes:
        if node is o.matmul or node is core:
            continue
        computed = _computed_inputs(node)
        if node.op_type == "Shape" or all(_is_shape_value(v, shape_memo) for v in computed):
            continue  # shape arithmetic: adapts to the new head count by itself
        if node.domain not in _DEFAULT:
            return f"{core.op_type} {name}: op {node.op_type} ({_node_name(node)}) inside the block is not understood"
        if node.op_type == "Reshape":
            found = _classify_attention_reshape(node, heads, head_dim)
            if isinstance(found, str):
                return found
            if found is not None:
                rewrites.append(found)
            continue
        if node.op_type in ("Expand", "Tile", "ConstantOfShape", "Split", "Slice", "Gather", "Concat", "Einsum",
                            "Conv", "Pad", "Resize"):
            return f"{core.op_type} {name}: {node.op_type} {_node_name(node)} on the head path is not supported"
        for value in node.inputs:
            const = _const(value)
            if const is None or const.size <= 1 or node.op_type in ("Unsqueeze", "Squeeze", "Transpose"):
                continue
            return (f"{core.op_type} {name}: constant of shape {list(const.shape)} in {node.op_type} "
                    f"{_node_name(node)} on the head path is not supported")
    return AttentionBlock(q=q, k=k, v=v, o=o, heads=heads, head_dim=head_dim, core=core, rewrites=rewrites)


def _is_shape_value(value: ir.Value, memo: dict[int, bool]) -> bool:
    """Whether ``value`` depends on nothing but ``Shape`` nodes and constants (shape arithmetic,
    which follows the tensors' new sizes by itself)."""
    key = id(value)
    if key not in memo:
        memo[key] = False  # cycles cannot happen in a valid graph; this guards the recursion
        node = value.producer()
        if _const(value) is not None:
            memo[key] = True
        elif node is None:
            memo[key] = False
        elif node.op_type == "Shape" and node.domain in _DEFAULT:
            memo[key] = True
        else:
            memo[key] = all(_is_shape_value(v, memo) for v in node.inputs if v is not None)
    return memo[key]


# ------------------------------------------------------------------------------ FFN


def _ffn_from(up: Projection, attention_matmuls: set[int]) -> FfnBlock | str | None:
    """The FFN that starts at ``up``, why it is refused (str), or None when ``up`` starts none."""
    width = up.shape[1]
    rows: list[tuple[ir.Node, int]] = []
    rewrites: list[ShapeRewrite] = []
    down: Projection | None = None
    seen: set[int] = set()
    path_values = _reach(up.output)
    stack = [up.output]
    while stack:
        value = stack.pop()
        if value.is_graph_output():
            return None
        for node in _consumers(value):
            if id(node) in seen:
                continue
            seen.add(id(node))
            candidate = _projection_at(node)
            if node.op_type == "MatMul" and candidate is not None and candidate.shape[0] == width \
                    and node.inputs[0] is value:
                if id(node) in attention_matmuls:
                    return None
                if down is not None and down.matmul is not node:
                    return None
                down = _with_bias(candidate)
                continue
            if node.op_type == "Shape" and node.domain in _DEFAULT:
                continue  # shape arithmetic; the cut is verified by running the model
            ok = _ffn_node_ok(node, width, path_values)
            if ok is None:
                return None
            if isinstance(ok, ShapeRewrite):
                rewrites.append(ok)
            elif isinstance(ok, list):
                rows.extend(ok)
            stack.extend(node.outputs)
        if len(seen) > 64:
            return None
    if down is None:
        return None
    # every consumer of a value on the way was accepted (or is down, or a Shape read): nothing else reads it
    return FfnBlock(up=up, down=down, width=width, rows=rows, rewrites=rewrites)


def _reach(start: ir.Value, limit: int = 256) -> set[int]:
    """Ids of the values reachable from ``start`` without passing a MatMul (bounded)."""
    found = {id(start)}
    stack = [start]
    while stack and len(found) < limit:
        for node in _consumers(stack.pop()):
            if node.op_type in ("MatMul", "Gemm", "Softmax", "Shape"):
                continue
            for out in node.outputs:
                if id(out) not in found:
                    found.add(id(out))
                    stack.append(out)
    return found


def _ffn_node_ok(node: ir.Node, width: int, path_values: set[int]) -> ShapeRewrite | list[tuple[ir.Node, int]] | bool | None:
    """Whether ``node`` may sit inside an FFN (None: no), with what must be sliced or rewritten."""
    op = node.op_type
    if node.domain == _MS and op in _FFN_MS:
        rows = []
        for i, value in enumerate(node.inputs[1:], start=1):
            const = _const(value)
            if const is None or const.shape != (width,):
                return None
            rows.append((node, i))
        return rows
    if node.domain not in _DEFAULT:
        return None
    if op == "Reshape":
        if id(node.inputs[0]) not in path_values:
            return None
        found = _classify_ffn_reshape(node, width)
        if isinstance(found, str):
            return None
        return found if found is not None else True
    if op in _FFN_UNARY:
        return True
    if op in _FFN_BINARY:
        rows = []
        for i, value in enumerate(node.inputs):
            if value is None:
                return None
            if id(value) in path_values:
                continue
            const = _const(value)
            if const is None:
                return None
            if const.size == 1:
                continue
            if const.shape[-1] == width and int(np.prod(const.shape[:-1])) == 1:
                rows.append((node, i))
                continue
            return None
        return rows if rows else True
    return None


# ------------------------------------------------------------------------------ layers


def _ancestors(value: ir.Value, within: set[int]) -> set[int]:
    """Ids of nodes in ``within`` that ``value`` depends on."""
    found: set[int] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        node = current.producer()
        if node is None or id(node) in found or id(node) not in within:
            continue
        found.add(id(node))
        stack.extend(v for v in node.inputs if v is not None)
    return found


def _descendants(value: ir.Value) -> dict[int, ir.Node]:
    return {id(n): n for n in _closure([value], stop=set())}


def _tail_signature(start: ir.Value, end: ir.Value) -> Counter[str] | None:
    """Op types of the nodes between ``start`` (exclusive) and ``end`` (inclusive)."""
    below = _descendants(start)
    between = _ancestors(end, set(below))
    if not between:
        return None
    return Counter(below[i].op_type for i in between)


def _last_output(graph: ir.Graph, start: ir.Value, template: Counter[str]) -> ir.Value | None:
    """The value after ``start`` whose ancestors since ``start`` have the op types of ``template``."""
    below = _descendants(start)
    size = sum(template.values())
    checked = 0
    for node in graph:
        if id(node) not in below:
            continue
        checked += 1
        if checked > 4 * size + 8:
            return None
        for out in node.outputs:
            between = _ancestors(out, set(below))
            if Counter(below[i].op_type for i in between) == template:
                return out
    return None


def prepare(model: ir.Model) -> None:
    """Make ``model`` (a copy) readable for :func:`find_structure`, in place: ``Constant`` nodes
    become initializers and shapes are inferred (``Normalize`` does this and more)."""
    import onnx_ir.passes.common as common_passes

    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common_passes.ShapeInferencePass(strict_mode=False)(model)


def structure_of(model: ir.Model | str | os.PathLike[str]) -> TransformerStructure:
    """The encoder layers of a model file (or of a copy of an ``onnx_ir.Model``): :func:`prepare`,
    then :func:`find_structure`; what ``onnx-compress inspect`` shows."""
    from onnx_compress.model_io import load_model

    work = model.clone() if isinstance(model, ir.Model) else load_model(model)
    prepare(work)
    return find_structure(work)


def find_structure(model: ir.Model) -> TransformerStructure:
    """The encoder layers of ``model`` (call :func:`prepare` on a copy first, or ``Normalize``)."""
    graph = model.graph
    order = {id(node): i for i, node in enumerate(graph)}
    notes: list[str] = []
    blocks: list[AttentionBlock] = []
    for node in graph:
        found: AttentionBlock | str | None = None
        if node.op_type == "Softmax" and node.domain in _DEFAULT:
            found = _plain_attention(node)
        elif node.op_type == "MultiHeadAttention" and node.domain == _MS:
            found = _fused_attention(node)
        elif node.op_type == "Attention" and node.domain == _MS:
            found = (f"Attention {_node_name(node)}: packed Q/K/V attention is not pruned; prune before `fuse` "
                     "or fuse with attention='mha'")
        if isinstance(found, str):
            notes.append(found)
        elif found is not None:
            blocks.append(found)
    attention_matmuls = {id(p.matmul) for b in blocks for p in (b.q, b.k, b.v, b.o)}
    ffns: list[FfnBlock] = []
    for node in graph:
        projection = _projection_at(node)
        if projection is None or node.op_type != "MatMul" or id(node) in attention_matmuls:
            continue
        found_ffn = _ffn_from(_with_bias(projection), attention_matmuls)
        if isinstance(found_ffn, FfnBlock):
            ffns.append(found_ffn)
    if not blocks:
        return TransformerStructure([], "none", notes)
    blocks.sort(key=lambda b: order[id(b.q.matmul)])
    ffns.sort(key=lambda f: order[id(f.up.matmul)])
    layers: list[EncoderLayer] = []
    for i, block in enumerate(blocks):
        start = order[id(block.o.matmul)]
        end = order[id(blocks[i + 1].q.matmul)] if i + 1 < len(blocks) else len(order)
        mine = [f for f in ffns if start < order[id(f.up.matmul)] < end]
        layer = EncoderLayer(index=i, attention=block, ffn=mine[0] if len(mine) == 1 else None)
        if len(mine) != 1:
            layer.ffn_reason = f"{len(mine)} feed-forward blocks found between this attention and the next"
        inputs = {id(p.input) for p in (block.q, block.k, block.v)}
        if len(inputs) == 1:
            layer.input = block.q.input
        layers.append(layer)
    form = "fused" if any(b.fused for b in blocks) else "plain"
    _set_outputs(graph, layers)
    return TransformerStructure(layers, form, notes)


def _set_outputs(graph: ir.Graph, layers: list[EncoderLayer]) -> None:
    """Each layer's output value, and why a layer cannot be removed."""
    for i, layer in enumerate(layers):
        if i + 1 < len(layers):
            layer.output = layers[i + 1].input
    template: Counter[str] | None = None
    if len(layers) >= 2:
        before = layers[-2]
        if before.ffn is not None and before.output is not None:
            template = _tail_signature(before.ffn.down.matmul.outputs[0], before.output)
        last = layers[-1]
        if template is not None and last.ffn is not None:
            last.output = _last_output(graph, last.ffn.down.matmul.outputs[0], template)
    for layer in layers:
        if layer.input is None:
            layer.depth_reason = "the Q, K and V projections read different values"
        elif layer.output is None:
            layer.depth_reason = "the layer's output value was not found"
        elif layer.ffn is None:
            layer.depth_reason = layer.ffn_reason or "no feed-forward block"
        elif layer.output is layer.input:
            layer.depth_reason = "the layer's input and output are the same value"
