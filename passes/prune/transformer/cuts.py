"""Graph surgery for width cuts: attention heads and FFN neurons (in place, on a copy).

Heads: keeping heads ``K`` (sorted) of a block with ``H`` heads of size ``d`` keeps the columns
``{h * d + j : h in K, j < d}`` of the Q, K and V weights and biases (the three slices of a
``MultiHeadAttention`` bias), the same rows of the output projection's weight, sets
``num_heads`` of a fused node to ``len(K)`` and rewrites the constant entries of the head
split/merge ``Reshape`` targets (``H -> len(K)``, ``H * d -> len(K) * d``). FFN: keeping neurons
``K`` keeps those columns of the up projection (and its bias, and every length-``F`` constant
row on the way, e.g. a ``BiasGelu`` bias) and those rows of the down projection; ``Reshape``
targets that carry ``F`` get ``len(K)``.

:func:`masked_reference` builds the exact reference of a cut: the same model with the removed
heads' V columns (and V bias) and the removed neurons' down-projection rows set to zero. A cut
model must compute the same outputs as it (up to float rounding); the pass checks that, so a
head layout the detection got wrong can never slip through.

Every constant is replaced by a new tensor (tensors are shared with the input model, see
:mod:`onnx_compress.passes.base`); a constant read by other nodes gets a new initializer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnx_compress.passes.prune.transformer.detect import AttentionBlock, FfnBlock, ShapeRewrite, _shape_source

__all__ = ["head_columns", "cut_heads", "cut_ffn", "masked_reference", "clear_shapes"]


def head_columns(heads: Sequence[int], head_dim: int) -> np.ndarray:
    """The projection columns of ``heads`` (head-major layout)."""
    return np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in sorted(heads)]).astype(np.int64)


def _unique(graph: ir.Graph, name: str) -> str:
    names = set(graph.initializers)
    unique, counter = name, 1
    while unique in names:
        unique, counter = f"{name}_{counter}", counter + 1
    return unique


def set_constant(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray) -> None:
    """Give input ``index`` of ``node`` the constant ``array`` (a new tensor; a new initializer when shared)."""
    array = np.ascontiguousarray(array)
    current = node.inputs[index]
    assert current is not None
    if current.is_initializer() and len(current.uses()) == 1 and not current.is_graph_input():
        current.const_value = ir.Tensor(array, name=current.name)
        current.shape = ir.Shape(array.shape)
        return
    name = _unique(graph, f"{current.name or node.name}_pruned")
    value = ir.Value(name=name, const_value=ir.Tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    node.replace_input_with(index, value)


def _take(graph: ir.Graph, node: ir.Node, index: int, keep: np.ndarray, axis: int) -> None:
    array = node.inputs[index].const_value.numpy()  # type: ignore[union-attr]
    set_constant(graph, node, index, np.take(array, keep, axis=axis))


def rewrite_shape(graph: ir.Graph, rewrite: ShapeRewrite, values: Mapping[str, int]) -> None:
    """Write ``values[kind]`` at the rewrite's positions of the Reshape's target shape."""
    reshape = rewrite.reshape
    shape_input = reshape.inputs[1]
    source = _shape_source(shape_input)
    assert source is not None and shape_input is not None
    cast = shape_input.producer() if source is not shape_input else None
    if source.const_value is not None:
        array = source.const_value.numpy().copy()
        for position, kind in rewrite.positions.items():
            array[position] = values[kind]
        new_source: ir.Value = _constant_value(graph, array, f"{reshape.name}_shape")
    else:
        concat = source.producer()
        assert concat is not None and concat.op_type == "Concat"
        pieces: list[ir.Value] = []
        offset = 0
        for piece in concat.inputs:
            assert piece is not None
            length = int(piece.const_value.numpy().size) if piece.const_value is not None else int(piece.shape[0])  # type: ignore[index]
            inside = {p - offset: k for p, k in rewrite.positions.items() if offset <= p < offset + length}
            if inside:
                array = piece.const_value.numpy().reshape(-1).copy()  # type: ignore[union-attr]
                for position, kind in inside.items():
                    array[position] = values[kind]
                piece = _constant_value(graph, array, f"{reshape.name}_shape_piece")
            pieces.append(piece)
            offset += length
        new_concat = ir.Node("", "Concat", pieces, attributes=[ir.AttrInt64("axis", 0)],
                             name=f"{reshape.name}_shape_concat")
        graph.insert_before(reshape, new_concat)
        new_source = new_concat.outputs[0]
        new_source.name = _unique(graph, f"{reshape.name}_shape_concat_out")
    if cast is not None:
        new_cast = ir.Node("", "Cast", [new_source], attributes=[ir.AttrInt64("to", cast.attributes.get_int("to", 7))],
                           name=f"{reshape.name}_shape_cast")
        graph.insert_before(reshape, new_cast)
        new_cast.outputs[0].name = _unique(graph, f"{reshape.name}_shape_cast_out")
        new_source = new_cast.outputs[0]
    reshape.replace_input_with(1, new_source)


def _constant_value(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    name = _unique(graph, name)
    value = ir.Value(name=name, const_value=ir.Tensor(np.ascontiguousarray(array), name=name),
                     shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


def cut_heads(graph: ir.Graph, block: AttentionBlock, keep: Sequence[int]) -> None:
    """Keep only ``keep`` of the block's heads (see the module docstring)."""
    columns = head_columns(keep, block.head_dim)
    width = block.heads * block.head_dim
    for projection in (block.q, block.k, block.v):
        _take(graph, projection.matmul, 1, columns, axis=1)
        if projection.bias_add is not None:
            _take(graph, projection.bias_add, projection.bias_index, columns, axis=0)
    _take(graph, block.o.matmul, 1, columns, axis=0)
    if block.fused:
        core = block.core
        core.attributes["num_heads"] = ir.AttrInt64("num_heads", len(keep))
        if len(core.inputs) > 3 and core.inputs[3] is not None:
            packed = np.concatenate([columns, columns + width, columns + 2 * width])
            _take(graph, core, 3, packed, axis=0)
    for rewrite in block.rewrites:
        rewrite_shape(graph, rewrite, {"heads": len(keep), "width": len(keep) * block.head_dim})


def cut_ffn(graph: ir.Graph, ffn: FfnBlock, keep: Sequence[int]) -> None:
    """Keep only neurons ``keep`` of the FFN (see the module docstring)."""
    index = np.asarray(sorted(keep), dtype=np.int64)
    _take(graph, ffn.up.matmul, 1, index, axis=1)
    if ffn.up.bias_add is not None:
        _take(graph, ffn.up.bias_add, ffn.up.bias_index, index, axis=0)
    for node, position in ffn.rows:
        _take(graph, node, position, index, axis=-1)
    _take(graph, ffn.down.matmul, 1, index, axis=0)
    for rewrite in ffn.rewrites:
        rewrite_shape(graph, rewrite, {"width": len(index)})


def masked_reference(graph: ir.Graph, blocks: Mapping[int, tuple[AttentionBlock, Sequence[int]]],
                     ffns: Mapping[int, tuple[FfnBlock, Sequence[int]]]) -> None:
    """Zero, in place, what the cut removes: the dropped heads' V columns and V bias, and the
    dropped neurons' down-projection rows (``blocks``/``ffns``: layer -> (block, kept units))."""
    for block, keep in blocks.values():
        width = block.heads * block.head_dim
        dropped = head_columns([h for h in range(block.heads) if h not in set(keep)], block.head_dim)
        weight = block.v.weight.const_value.numpy().copy()  # type: ignore[union-attr]
        weight[:, dropped] = 0
        set_constant(graph, block.v.matmul, 1, weight)
        if block.v.bias_add is not None:
            bias = block.v.bias_add.inputs[block.v.bias_index].const_value.numpy().copy()  # type: ignore[union-attr]
            bias[dropped] = 0
            set_constant(graph, block.v.bias_add, block.v.bias_index, bias)
        if block.fused and len(block.core.inputs) > 3 and block.core.inputs[3] is not None:
            bias = block.core.inputs[3].const_value.numpy().copy()  # type: ignore[union-attr]
            bias[2 * width + dropped] = 0
            set_constant(graph, block.core, 3, bias)
    for ffn, keep in ffns.values():
        dropped = np.array([j for j in range(ffn.width) if j not in set(keep)], dtype=np.int64)
        weight = ffn.down.weight.const_value.numpy().copy()  # type: ignore[union-attr]
        weight[dropped, :] = 0
        set_constant(graph, ffn.down.matmul, 1, weight)


def clear_shapes(graph: ir.Graph) -> None:
    """Forget the inferred shapes of intermediate values (the cut changed them); shape inference
    fills them in again. Graph inputs, outputs and initializers keep theirs."""
    outputs = {id(v) for v in graph.outputs}
    for node in graph:
        for value in node.outputs:
            if id(value) not in outputs:
                value.shape = None
