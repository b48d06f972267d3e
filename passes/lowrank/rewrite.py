"""The graph rewrite: one layer ``Y = X W (+ bias)`` becomes two, ``H = X A`` then ``Y = H B (+ bias)``.

- ``MatMul(X, W)`` -> ``MatMul(X, A)``, ``MatMul(H, B)``; batched X (``[..., M, K]``) works as is.
- ``Gemm(X, W, C)`` -> first ``MatMul(X, A)``, or ``Gemm(X, A, transA=1)`` when ``transA`` (no C);
  second ``Gemm(H, alpha B, C, beta=beta)`` when there is a C, else ``MatMul(H, alpha B)``.
  ``alpha`` is folded into ``B``; the new weights are stored untransposed.
- ``Conv(X, W, b)`` -> ``Conv(X, A_k)`` with ``r`` output channels and the node's kernel, strides,
  pads, dilations and auto_pad, then a 1x1 ``Conv(H, B_k, b)`` to ``C_out``, where
  ``A_k = A^T`` reshaped to ``r x C_in x k1 x ... x kd`` and ``B_k = B^T`` reshaped to
  ``C_out x r x 1 x ... x 1``.

The original node's output value keeps its name, type and shape (consumers and graph outputs are
untouched). New initializers, values and nodes get names derived from the originals, made
unique in the graph. The intermediate ``H`` is typed and shaped from the original output with
its feature axis set to ``r``. The old weight initializer is removed when nothing else uses it
(the pass only factors unshared weights). The input model's tensors are never written: the
factors are new tensors.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_compress.passes.lowrank.targets import Target

__all__ = ["NameScope", "factor_node"]


class NameScope:
    """Unique names for new values, initializers and nodes of one graph."""

    def __init__(self, graph: ir.Graph) -> None:
        self.used: set[str] = set(graph.initializers)
        for value in graph.inputs:
            self.used.add(str(value.name))
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if node.name:
                self.used.add(node.name)
            for value in [*node.inputs, *node.outputs]:
                if value is not None and value.name:
                    self.used.add(value.name)

    def unique(self, base: str) -> str:
        name, index = base, 1
        while name in self.used:
            name = f"{base}_{index}"
            index += 1
        self.used.add(name)
        return name


def _initializer(graph: ir.Graph, scope: NameScope, base: str, array: np.ndarray) -> ir.Value:
    name = scope.unique(base)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def _hidden_shape(output: ir.Value, rank: int, channel_axis: int) -> ir.Shape | None:
    if output.shape is None:
        return None
    dims = list(output.shape.dims)
    if not dims:
        return None
    dims[channel_axis] = rank
    return ir.Shape(dims)


def _numpy_dtype(value: ir.Value) -> np.dtype:
    return value.const_value.dtype.numpy()  # type: ignore[union-attr]


def factor_node(graph: ir.Graph, target: Target, a: np.ndarray, b: np.ndarray, scope: NameScope) -> list[ir.Node]:
    """Replace ``target.node`` by the two nodes of ``A`` (K x r) and ``B`` (r x N); returns them."""
    node = target.node
    rank = int(a.shape[1])
    if a.shape != (target.k, rank) or b.shape != (rank, target.n):
        raise ValueError(f"factor shapes {a.shape} x {b.shape} do not fit a {target.k} x {target.n} weight")
    dtype = _numpy_dtype(target.weight)
    base = str(target.weight.name)
    node_base = target.name
    output = node.outputs[0]
    x = target.input
    hidden_name = scope.unique(f"{output.name}_lowrank_r{rank}")
    channel_axis = 1 if target.kind == "conv" else -1
    hidden_shape = _hidden_shape(output, rank, channel_axis)
    # a type without a shape makes an incomplete value_info entry: leave both to shape inference
    hidden = ir.Value(name=hidden_name, shape=hidden_shape, type=output.type if hidden_shape is not None else None)
    result = ir.Value(name=scope.unique(f"{output.name}_lowrank_out"))

    if target.kind == "conv":
        kernel = target.weight.const_value.shape.numpy()[2:]  # type: ignore[union-attr]
        c_in = int(target.weight.const_value.shape[1])  # type: ignore[union-attr]
        a_kernel = np.ascontiguousarray(a.T.reshape(rank, c_in, *kernel)).astype(dtype)
        b_kernel = np.ascontiguousarray(b.T.reshape(target.n, rank, *([1] * len(kernel)))).astype(dtype)
        a_value = _initializer(graph, scope, f"{base}_lowrank_a", a_kernel)
        b_value = _initializer(graph, scope, f"{base}_lowrank_b", b_kernel)
        first_attrs = [ir.Attr(key, attr.type, attr.value) for key, attr in node.attributes.items()
                       if key != "kernel_shape" and attr.ref_attr_name is None]
        first_attrs.append(ir.AttrInt64s("kernel_shape", [int(k) for k in kernel]))
        first = ir.Node("", "Conv", [x, a_value], first_attrs, outputs=[hidden], name=scope.unique(f"{node_base}_lowrank_a"))
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        second_inputs = [hidden, b_value] + ([bias] if bias is not None else [])
        second = ir.Node("", "Conv", second_inputs, [ir.AttrInt64s("kernel_shape", [1] * len(kernel))],
                         outputs=[result], name=scope.unique(f"{node_base}_lowrank_b"))
    elif target.kind == "gemm":
        alpha = node.attributes.get_float("alpha", 1.0)
        beta = node.attributes.get_float("beta", 1.0)
        trans_a = node.attributes.get_int("transA", 0)
        a_value = _initializer(graph, scope, f"{base}_lowrank_a", np.ascontiguousarray(a).astype(dtype))
        b_value = _initializer(graph, scope, f"{base}_lowrank_b", np.ascontiguousarray(alpha * b).astype(dtype))
        if trans_a:
            first = ir.Node("", "Gemm", [x, a_value], [ir.AttrInt64("transA", 1)], outputs=[hidden],
                            name=scope.unique(f"{node_base}_lowrank_a"))
        else:
            first = ir.Node("", "MatMul", [x, a_value], outputs=[hidden], name=scope.unique(f"{node_base}_lowrank_a"))
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None:
            second = ir.Node("", "Gemm", [hidden, b_value, bias], [ir.AttrFloat32("beta", beta)], outputs=[result],
                             name=scope.unique(f"{node_base}_lowrank_b"))
        else:
            second = ir.Node("", "MatMul", [hidden, b_value], outputs=[result], name=scope.unique(f"{node_base}_lowrank_b"))
    else:
        a_value = _initializer(graph, scope, f"{base}_lowrank_a", np.ascontiguousarray(a).astype(dtype))
        b_value = _initializer(graph, scope, f"{base}_lowrank_b", np.ascontiguousarray(b).astype(dtype))
        first = ir.Node("", "MatMul", [x, a_value], outputs=[hidden], name=scope.unique(f"{node_base}_lowrank_a"))
        second = ir.Node("", "MatMul", [hidden, b_value], outputs=[result], name=scope.unique(f"{node_base}_lowrank_b"))

    weight = target.weight
    # the new output takes over the old one's name, type and shape; consumers and graph outputs follow
    ir.convenience.replace_nodes_and_values(graph, node, [node], [first, second], [output], [result])
    if not weight.uses() and weight.name in graph.initializers and not weight.is_graph_output():
        graph.initializers.pop(str(weight.name))
    return [first, second]
