"""Per-op slicing: cut the chosen indices out of the model.

Given the indices each channel axis keeps, :func:`apply_cuts` (in place, on a model that the
pass owns):

1. slices every initializer on its cut axes (one new ``ir.Tensor`` per initializer, never a
   write into a shared array) and updates the shape of every cut activation;
2. fixes the ops whose attributes or shape inputs name a channel count (``NODE_FIXES``):
   a depthwise ``Conv`` gets ``group`` = its new input width; a ``Reshape`` gets a new
   constant target (``0``/``-1`` for dynamic dims, see :func:`.rules.reshape_target`), which
   makes a ``Shape -> Gather -> Concat`` target computation dead; a ``Split`` gets its new
   sizes; a ``Resize`` with ``sizes`` gets the new channel count;
3. removes the nodes and initializers that became unused.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnx_compress.passes.prune.coupling import AxisNode
from onnx_compress.passes.prune.rules import Dim, RuleContext, reshape_target

__all__ = ["apply_cuts", "NODE_FIXES"]

NodeFix = Callable[[ir.Node, "_Fixer"], None]


class _Fixer:
    """Shared state of one application: old shapes, fresh names, the graph."""

    def __init__(self, model: ir.Model, old_shapes: dict[int, tuple[Dim, ...]]) -> None:
        self.model = model
        self.graph = model.graph
        self.old_shapes = old_shapes
        self.ctx = RuleContext(model)
        self._names = {str(v.name) for v in self.graph.initializers.values()}
        self._names.update(str(v.name) for node in self.graph for v in node.outputs if v is not None)
        self._names.update(str(v.name) for v in self.graph.inputs)

    def old_shape(self, value: ir.Value) -> tuple[Dim, ...] | None:
        return self.old_shapes.get(id(value), self.ctx.shape(value))

    def new_initializer(self, base: str, array: np.ndarray) -> ir.Value:
        name = base
        counter = 1
        while name in self._names:
            name = f"{base}_{counter}"
            counter += 1
        self._names.add(name)
        value = ir.Value(name=name, const_value=ir.Tensor(np.ascontiguousarray(array), name=name),
                         shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        self.graph.register_initializer(value)
        return value

    def set_input(self, node: ir.Node, index: int, value: ir.Value) -> None:
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)


def _fix_conv(node: ir.Node, fixer: _Fixer) -> None:
    groups = node.attributes.get_int("group", 1)
    old = fixer.old_shape(node.inputs[0])
    new = fixer.ctx.shape(node.inputs[0])
    if groups > 1 and old is not None and new is not None and old[1] == groups and new[1] != old[1]:
        node.attributes["group"] = ir.AttrInt64("group", int(new[1]))  # type: ignore[arg-type]


def _fix_reshape(node: ir.Node, fixer: _Fixer) -> None:
    in_shape, out_shape = fixer.ctx.shape(node.inputs[0]), fixer.ctx.shape(node.outputs[0])
    if in_shape is None or out_shape is None:
        raise ValueError(f"Reshape '{node.name}' lost its shapes")
    target = reshape_target(in_shape, out_shape, node.attributes.get_int("allowzero", 0))
    if isinstance(target, str):
        raise ValueError(f"Reshape '{node.name}': {target}")
    value = fixer.new_initializer(f"{node.name or 'reshape'}_pruned_shape", np.asarray(target, dtype=np.int64))
    fixer.set_input(node, 1, value)


def _fix_split(node: ir.Node, fixer: _Fixer) -> None:
    shape = fixer.ctx.shape(node.inputs[0])
    rank = len(shape) if shape is not None else 0
    axis = node.attributes.get_int("axis", 0)
    axis = axis + rank if axis < 0 else axis
    sizes = []
    for out in node.outputs:
        out_shape = fixer.ctx.shape(out)
        if out_shape is None or not isinstance(out_shape[axis], int):
            raise ValueError(f"Split '{node.name}': output sizes unknown")
        sizes.append(out_shape[axis])
    if fixer.ctx.opset >= 13:
        node.attributes.pop("num_outputs", None)
        value = fixer.new_initializer(f"{node.name or 'split'}_pruned_sizes", np.asarray(sizes, dtype=np.int64))
        fixer.set_input(node, 1, value)
    else:
        node.attributes["split"] = ir.AttrInt64s("split", sizes)  # type: ignore[arg-type]


def _fix_resize(node: ir.Node, fixer: _Fixer) -> None:
    if len(node.inputs) < 4 or node.inputs[3] is None:
        return
    sizes = fixer.ctx.ints(node.inputs[3])
    shape = fixer.ctx.shape(node.inputs[0])
    if sizes is None or shape is None:
        raise ValueError(f"Resize '{node.name}': sizes unknown")
    rank = len(shape)
    axes = [a + rank if a < 0 else a for a in node.attributes.get_ints("axes", list(range(rank)))]
    old = fixer.old_shape(node.inputs[0]) or shape
    new_sizes = [shape[axis] if old[axis] == sizes[pos] and isinstance(shape[axis], int) else sizes[pos]
                 for pos, axis in enumerate(axes)]
    value = fixer.new_initializer(f"{node.name or 'resize'}_pruned_sizes", np.asarray(new_sizes, dtype=np.int64))
    fixer.set_input(node, 3, value)


#: op type -> fix of the attributes / shape inputs that name a channel count
NODE_FIXES: dict[str, NodeFix] = {
    "Conv": _fix_conv,
    "Reshape": _fix_reshape,
    "Split": _fix_split,
    "Resize": _fix_resize,
}


def apply_cuts(model: ir.Model, kept: Mapping[AxisNode, np.ndarray]) -> int:
    """Cut ``model`` in place so that each axis keeps ``kept[axis]``; returns the cut axes count.

    ``kept`` holds only axes that lose indices. Raises ValueError when a node cannot be fixed
    (the pass then leaves the group untouched).
    """
    ctx = RuleContext(model)
    by_value: dict[int, tuple[ir.Value, dict[int, np.ndarray]]] = {}
    for axis, indices in kept.items():
        if len(indices) == axis.size:
            continue
        entry = by_value.setdefault(id(axis.value), (axis.value, {}))
        entry[1][axis.axis] = np.asarray(indices, dtype=np.int64)
    old_shapes = {key: ctx.shape(value) for key, (value, _) in by_value.items()}
    touched: dict[int, ir.Node] = collections.OrderedDict()
    for value, cuts in by_value.values():
        if value.is_initializer() or value.const_value is not None:
            array = value.const_value.numpy()  # type: ignore[union-attr]
            for axis, indices in sorted(cuts.items()):
                array = np.take(array, indices, axis=axis)
            value.const_value = ir.Tensor(np.ascontiguousarray(array), name=value.name)
            value.shape = ir.Shape(array.shape)
        else:
            if value.shape is None:
                raise ValueError(f"'{value.name}' has no shape")
            dims = list(value.shape)
            for axis, indices in cuts.items():
                dims[axis] = len(indices)
            value.shape = ir.Shape(dims)
        producer = value.producer()
        if producer is not None:
            touched[id(producer)] = producer
        for use in value.uses():
            touched[id(use.node)] = use.node
    fixer = _Fixer(model, {k: v for k, v in old_shapes.items() if v is not None})
    for node in touched.values():
        fix = NODE_FIXES.get(node.op_type)
        if fix is not None and node.domain in ("", "ai.onnx"):
            fix(node, fixer)
    common_passes.RemoveUnusedNodesPass()(model)
    return sum(len(cuts) for _, cuts in by_value.values())
