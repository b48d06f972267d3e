"""Patterns of other converters that normalization rewrites, so the passes see plain initializers.

Each helper works in place on normalization's own copy of the model and returns what it did.

``ensure_sorted``
    ONNX requires nodes in topological order, ONNX Runtime does not: some converters write
    graphs out of order, which ``onnx_ir``'s clone (every pass copies its input) cannot handle.
    An unsorted model is copied through a protobuf round trip and sorted (the input is left as
    it is).

``internalize_initializer_inputs``
    Models of IR version 3 (ONNX's own opset-9 test models, old Caffe2 exports) list every
    initializer as a graph input too: formally a default the caller may override, which hides
    the weights from constant folding and from every pass. They are removed from the inputs (the
    IR version goes to 4, where initializers need not be inputs). A caller that did override
    them would now be refused by ONNX Runtime with an unknown input.

``fold_weights_of_constant_of_shape`` (a ``should_fold`` rule for onnxscript's folder)
    onnxscript keeps ``ConstantOfShape`` unfolded (it stores a small shape rather than a large
    tensor). Where its output is a *weight* (it reaches the weight/bias input of Conv,
    ConvTranspose, Gemm, MatMul, Gather, BatchNormalization, LSTM/GRU/RNN through constant
    nodes only), it is folded: a pass can only compress a weight it can see. The model then
    stores those tensors, and the growth is reported with its reason. A ``ConstantOfShape`` of
    at most ``SMALL_CONSTANT_ELEMENTS`` float elements (a per-channel scale in front of a ``Mul``)
    is folded wherever it is: structured pruning cannot slice a ``ConstantOfShape``.

``hoist_subgraph_constants``
    Inside ``If`` / ``Loop`` / ``Scan`` bodies, a node whose inputs are all constants of the
    main graph (``Transpose(W)``, ``Identity(W)``, a ``Constant``) is moved out, in front of the
    control-flow node, and identical ones are merged (same op, same inputs and attributes, or
    ``Constant`` nodes with equal tensors). Folding them inside each branch would store one copy
    per branch: a model whose two branches read one weight grew by that weight per branch.

``FoldConvBiasAddPass``
    ``Y = Conv(X, W[, b]) + c`` where ``c`` is a constant that broadcasts along the channel axis
    only (shapes ``[C, 1, 1]``, ``[1, C, 1, 1]``, ``[1]``, a scalar; the paddle2onnx pattern
    ``Add(Conv, Reshape(b, [1, C, 1, 1]))`` after folding) becomes ``Conv(X, W, b + c)``:
    ``sum_k W * x + b + c = sum_k W * x + (b + c)`` exactly, per output channel. Also for
    ``ConvTranspose``. Refused (left as is) when the Conv output has other readers or is a graph
    output, or ``c`` does not broadcast per channel. After it, ``BatchNormalization`` that
    followed the ``Add`` sits right after the Conv and folds into it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

__all__ = [
    "FoldConvBiasAddPass",
    "constant_bytes",
    "ensure_sorted",
    "hoist_subgraph_constants",
    "internalize_initializer_inputs",
    "weight_cone",
]

logger = logging.getLogger(__name__)

#: op type -> input indices that hold weights (what the compression passes read)
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (1, 2),
    "MatMul": (1,),
    "Gather": (0,),
    "BatchNormalization": (1, 2, 3, 4),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "LSTM": (1, 2, 3),
    "GRU": (1, 2, 3),
    "RNN": (1, 2, 3),
    "PRelu": (1,),
}


def _has_subgraph(node: ir.Node) -> bool:
    return any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values())


def _subgraphs(node: ir.Node) -> Iterator[ir.Graph]:
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            yield attr.as_graph()
        elif attr.type == ir.AttributeType.GRAPHS:
            yield from attr.as_graphs()


# --------------------------------------------------------------------------- sorting
def is_sorted(graph: ir.Graph) -> bool:
    """Whether every node of ``graph`` (and of its subgraphs) comes after the producers it reads."""
    seen: set[int] = set()
    for node in graph:
        for value in node.inputs:
            if value is None:
                continue
            producer = value.producer()
            if producer is not None and producer.graph is graph and id(producer) not in seen:
                return False
        for sub in _subgraphs(node):
            if not is_sorted(sub):
                return False
        seen.add(id(node))
    return True


def ensure_sorted(model: ir.Model) -> tuple[ir.Model, bool]:
    """``model`` itself when its graphs are in topological order, else a sorted copy; and whether it sorted."""
    if is_sorted(model.graph):
        return model, False
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    copy.graph.sort()  # subgraphs too
    return copy, True


# --------------------------------------------------------------------------- initializers as inputs
def internalize_initializer_inputs(model: ir.Model) -> list[str]:
    """Remove initializers from the main graph's inputs (IR version raised to 4); their names."""
    initializers = set(model.graph.initializers.values())
    moved = [str(value.name) for value in model.graph.inputs if value in initializers]
    if not moved:
        return []
    kept = [value for value in model.graph.inputs if value not in initializers]
    model.graph.inputs.clear()
    model.graph.inputs.extend(kept)
    model.ir_version = max(model.ir_version or 0, 4)
    return moved


# --------------------------------------------------------------------------- ConstantOfShape weights
def _is_constant_source(value: ir.Value) -> bool:
    return value.const_value is not None and not value.is_graph_input()


def weight_cone(model: ir.Model) -> set[int]:
    """ids of the nodes that compute a weight from constants only (see the module docstring).

    A node is in the cone when all its inputs are constants (initializers that are not graph
    inputs, or outputs of nodes in the cone) and one of its outputs reaches a weight input of
    an op in :data:`WEIGHT_INPUTS` through such nodes.
    """
    constant_nodes: set[int] = set()
    nodes: list[ir.Node] = []
    for graph in model.graphs():
        for node in graph:
            nodes.append(node)
    changed = True
    while changed:  # nodes whose inputs are all constant (order-independent fixpoint)
        changed = False
        for node in nodes:
            if id(node) in constant_nodes or _has_subgraph(node) or node.domain not in ("", "ai.onnx"):
                continue
            if all(v is None or _is_constant_source(v) or
                   (v.producer() is not None and id(v.producer()) in constant_nodes) for v in node.inputs):
                constant_nodes.add(id(node))
                changed = True
    cone: set[int] = set()
    stack: list[ir.Node] = []
    for node in nodes:
        for index in WEIGHT_INPUTS.get(node.op_type, ()):
            if index < len(node.inputs) and node.inputs[index] is not None:
                producer = node.inputs[index].producer()
                if producer is not None and id(producer) in constant_nodes:
                    stack.append(producer)
    while stack:
        node = stack.pop()
        if id(node) in cone:
            continue
        cone.add(id(node))
        for value in node.inputs:
            if value is not None and value.producer() is not None and id(value.producer()) in constant_nodes:
                stack.append(value.producer())
    return cone


#: a ConstantOfShape of at most this many elements is folded wherever it is (a per-channel scale)
SMALL_CONSTANT_ELEMENTS = 4096


def _small_constant_of_shape(node: ir.Node) -> bool:
    """A float ``ConstantOfShape`` of a constant shape with few elements (integer and boolean
    ones, the index and mask helpers of transformer exports, are left to onnxscript)."""
    shape = node.inputs[0] if node.inputs else None
    if shape is None or shape.const_value is None or shape.is_graph_input():
        return False
    value = node.attributes.get("value")
    dtype = value.as_tensor().dtype if value is not None else ir.DataType.FLOAT  # ONNX's default: float 0
    if dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16):
        return False
    return int(np.prod(shape.const_value.numpy())) <= SMALL_CONSTANT_ELEMENTS


def should_fold_rule(cone: set[int], counter: dict[str, int]):
    """A ``should_fold`` callback for onnxscript's folder: fold ``ConstantOfShape`` weights."""

    def should_fold(node: ir.Node) -> bool | None:
        if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx"):
            kind = "ConstantOfShape" if id(node) in cone else \
                "small ConstantOfShape" if _small_constant_of_shape(node) else None
            if kind is not None:
                counter[kind] = counter.get(kind, 0) + 1
                return True
        return None

    return should_fold


# --------------------------------------------------------------------------- subgraph constants
def _outer_constant(value: ir.Value, main: ir.Graph, hoisted: set[int]) -> bool:
    if value.is_initializer() and value.graph is main and not value.is_graph_input():
        return value.const_value is not None
    producer = value.producer()
    return producer is not None and id(producer) in hoisted


def _node_key(node: ir.Node) -> tuple | None:
    """A key equal for nodes that compute the same thing (None: do not merge)."""
    attrs = []
    for name, attr in sorted(node.attributes.items()):
        if attr.type == ir.AttributeType.TENSOR:
            tensor = attr.as_tensor()
            digest = hashlib.sha1(tensor.tobytes()).hexdigest()
            attrs.append((name, "tensor", str(tensor.dtype), tuple(tensor.shape.numpy()), digest))
        elif attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return None
        else:
            value = attr.value
            attrs.append((name, str(attr.type), tuple(value) if isinstance(value, list) else value))
    return (node.domain, node.op_type, len(node.outputs), tuple(id(v) for v in node.inputs), tuple(attrs))


def hoist_subgraph_constants(model: ir.Model) -> tuple[int, int]:
    """Move constant nodes out of control-flow bodies and merge equal ones; (moved, merged)."""
    main = model.graph
    hoisted: set[int] = set()
    keys: dict[tuple, ir.Node] = {}
    moved = merged = 0
    for anchor in list(main):
        if not _has_subgraph(anchor):
            continue
        pending = [graph for graph in _subgraphs(anchor)]
        while pending:
            graph = pending.pop()
            for node in list(graph):
                pending.extend(_subgraphs(node))
                if _has_subgraph(node) or node.op_type in ("RandomUniform", "RandomNormal", "RandomUniformLike",
                                                           "RandomNormalLike", "Multinomial"):
                    continue
                if any(output.is_graph_output() for output in node.outputs):
                    continue
                if not all(v is None or _outer_constant(v, main, hoisted) for v in node.inputs):
                    continue
                key = _node_key(node)
                twin = keys.get(key) if key is not None else None
                if twin is not None:
                    for old, new in zip(node.outputs, twin.outputs):
                        old.replace_all_uses_with(new)
                    graph.remove(node, safe=True)
                    merged += 1
                    continue
                graph.remove(node, safe=False)
                main.insert_before(anchor, node)
                hoisted.add(id(node))
                if key is not None:
                    keys[key] = node
                moved += 1
    return moved, merged


# --------------------------------------------------------------------------- Conv + bias Add
def _channel_bias(value: ir.Value, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a per-channel vector of ``channels`` when it broadcasts over axis 1 of a
    rank-``rank`` output only; None otherwise."""
    if value.const_value is None or value.is_graph_input():
        return None
    array = value.const_value.numpy()
    if array.dtype.kind != "f":
        return None
    shape = list(array.shape)
    if len(shape) > rank:
        return None
    padded = [1] * (rank - len(shape)) + shape
    if any(d != 1 for i, d in enumerate(padded) if i != 1) or padded[1] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)) if array.size == 1 else array.reshape(channels)


class FoldConvBiasAddPass(ir.passes.InPlacePass):
    """Fold a per-channel constant ``Add`` after a Conv / ConvTranspose into its bias (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.folded: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = 0
        for graph in model.graphs():
            for node in list(graph):
                if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx"):
                    continue
                if self._fold(graph, node):
                    count += 1
        return ir.passes.PassResult(model, modified=bool(count))

    def _fold(self, graph: ir.Graph, conv: ir.Node) -> bool:
        out = conv.outputs[0]
        uses = list(out.uses())
        if len(uses) != 1 or out.is_graph_output():
            return False
        add = uses[0].node
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or add.graph is not graph:
            return False
        other = add.inputs[1 - uses[0].idx]
        weight = conv.inputs[1] if len(conv.inputs) > 1 else None
        if other is None or weight is None or weight.const_value is None or out.shape is None:
            return False
        w_shape = list(weight.const_value.shape.numpy())
        group = conv.attributes.get_int("group", 1)
        channels = w_shape[0] if conv.op_type == "Conv" else w_shape[1] * group
        rank = len(out.shape)
        c = _channel_bias(other, int(channels), rank)
        if c is None or c.dtype != weight.const_value.dtype.numpy():
            return False
        old_bias = conv.inputs[2] if len(conv.inputs) > 2 else None
        if old_bias is not None:
            if old_bias.const_value is None or old_bias.is_graph_input() or len(old_bias.uses()) > 1:
                return False
            c = old_bias.const_value.numpy().astype(c.dtype) + c
        name = f"{conv.name or out.name}_bias"
        while name in graph.initializers:
            name += "_"
        bias = ir.Value(name=name, shape=ir.Shape([len(c)]), type=ir.TensorType(ir.DataType.from_numpy(c.dtype)),
                        const_value=ir.tensor(np.ascontiguousarray(c), name=name))
        graph.register_initializer(bias)
        if len(conv.inputs) < 3:
            conv.resize_inputs(3)
        conv.replace_input_with(2, bias)
        added = add.outputs[0]
        # the Conv's output takes the Add's place (its name too, so graph outputs keep theirs)
        add_name = added.name
        added.replace_all_uses_with(out, replace_graph_outputs=True)
        graph.remove(add, safe=True)
        added.name = None
        out.name = add_name
        if added.shape is not None:
            out.shape = added.shape
        if old_bias is not None and not old_bias.uses() and old_bias.name in graph.initializers:
            graph.initializers.pop(str(old_bias.name))
        self.folded.append(str(conv.name))
        return True


# --------------------------------------------------------------------------- sizes
def constant_bytes(model: ir.Model) -> int:
    """Bytes of every initializer and ``Constant`` tensor, in every graph."""
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
        for node in graph:
            if node.op_type == "Constant":
                for attr in node.attributes.values():
                    if attr.type == ir.AttributeType.TENSOR:
                        total += attr.as_tensor().nbytes
    return total


def _float16_cast_weights(model: ir.Model) -> int:
    """Bytes of float16 / bfloat16 constants read by a Cast to float (they double when folded)."""
    total = 0
    for graph in model.graphs():
        for node in graph:
            if node.op_type != "Cast" or not node.inputs or node.inputs[0] is None:
                continue
            value = node.inputs[0]
            if value.const_value is not None and value.const_value.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) \
                    and node.attributes.get_int("to", 0) == onnx.TensorProto.FLOAT:
                total += value.const_value.nbytes
    return total
