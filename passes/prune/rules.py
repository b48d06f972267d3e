"""Per-op coupling rules: how each ONNX op relates the channel axes of its inputs and outputs.

A rule takes a node and returns a :class:`~.coupling.NodeCoupling`: the relations between the
axes of its inputs and outputs (see :mod:`.coupling`), the axes it cannot pass a cut through
(with the reason), and the axes whose *size* it reads (``Shape``). An op without a rule stops
pruning at that point: every group that reaches it is left untouched, naming the op.

Covered (default ONNX domain):

- weighted: ``Conv`` (plain, grouped: position ``j`` of every group is cut together so each
  group keeps the same width; depthwise, with a channel multiplier), ``ConvTranspose``
  (group 1), ``Gemm`` (``transA``/``transB``, bias ``C`` broadcast), ``MatMul`` (constant or
  dynamic operands, batch broadcasting: a contraction axis couples both operands);
- per-channel: ``BatchNormalization``, ``InstanceNormalization``; ``LayerNormalization`` and
  ``MeanVarianceNormalization`` only along axes they do not normalize;
- elementwise and activations, with numpy broadcasting (a constant operand with the channel
  axis is sliced with it; a size-1 axis is broadcast and left alone);
- pooling (channel axis 1), ``Reduce*``/``ArgMax``/``ArgMin``/``Softmax``-like ops along axes
  they do not reduce or normalize;
- data movement: ``Transpose`` (axes permuted), ``Reshape``/``Flatten``/``Squeeze``/
  ``Unsqueeze`` (dims aligned by products: a channel axis merged with others maps channel
  ``c`` to its block or stride of features, as ``Flatten`` before a ``Gemm`` or the NHWC
  ``Transpose(0,2,3,1) -> Reshape`` of tf2onnx exports), ``Concat`` and ``Split`` along the
  channel axis (index offsets) or along others, ``Slice``/``Pad``/``Tile``/``Expand``/
  ``Resize``/``Gather`` along axes they leave whole;
- ``Shape``/``Size``: their reads of a channel count are checked by the coupling analysis.

Not covered (the group is left untouched with the reason): a Reshape that splits the channel
axis into several (attention heads), a Reshape target that cannot be rewritten as a constant,
ops that mix channels (``LRN``, ``GroupNormalization``, ``DepthToSpace``...), custom domains.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnx_compress.passes.prune.relations import IN, OUT, Member, NodeCoupling, Port, Relation, Role

__all__ = ["RuleContext", "Dim", "coupling_of", "align_dims", "reshape_target"]

#: a dimension: static size, symbolic name, or None (unknown)
Dim = int | str | None
#: a known shape (its dimensions may still be symbolic or unknown)
Shape = tuple[Dim, ...]


class RuleContext:
    """What rules may ask about the model: shapes, constants, the opset."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.opset = int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13)))

    @staticmethod
    def shape(value: ir.Value | None) -> tuple[Dim, ...] | None:
        if value is None:
            return None
        if value.const_value is not None:
            return tuple(int(d) for d in value.const_value.shape)
        if value.shape is None:
            return None
        dims: list[Dim] = []
        for dim in value.shape:
            if isinstance(dim, int):
                dims.append(dim)
            elif isinstance(dim, ir.SymbolicDim) and dim.value:
                dims.append(str(dim.value))
            else:
                dims.append(None)
        return tuple(dims)

    @staticmethod
    def const(value: ir.Value | None) -> np.ndarray | None:
        if value is None or value.const_value is None:
            return None
        return value.const_value.numpy()

    def ints(self, value: ir.Value | None) -> list[int] | None:
        array = self.const(value)
        return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]


Rule = Callable[[ir.Node, RuleContext], NodeCoupling]
_RULES: dict[str, Rule] = {}


def _rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn

    return register


def coupling_of(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
    """The coupling of one node (a refusal naming the op when there is no rule)."""
    if node.domain not in ("", "ai.onnx"):
        return NodeCoupling.refuse(f"ops of domain '{node.domain}' are not supported")
    rule = _RULES.get(node.op_type)
    if rule is None:
        return NodeCoupling.refuse(f"{node.op_type} is not supported by structured pruning")
    return rule(node, ctx)


def _static(dim: Dim) -> int | None:
    return dim if isinstance(dim, int) else None


def _axis_attr(node: ir.Node, name: str, rank: int, default: int) -> int:
    axis = node.attributes.get_int(name, default)
    return axis + rank if axis < 0 else axis


def _unknown_shape(node: ir.Node, value: ir.Value | None) -> NodeCoupling:
    name = value.name if value is not None else "?"
    return NodeCoupling.refuse(f"the shape of '{name}' is unknown")


def _known_shapes(*ports: Port, min_rank: int = 0) -> Callable[[Callable[..., NodeCoupling]], Rule]:
    """A rule that needs the shapes of ``ports``: it is called as ``rule(node, ctx, *shapes)``, and the
    node is refused here, once for every such rule, naming the first value whose shape is unknown
    (or of rank below ``min_rank``)."""
    def wrap(fn: Callable[..., NodeCoupling]) -> Rule:
        @functools.wraps(fn)
        def rule(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
            shapes = []
            for port in ports:
                shape = ctx.shape(port.value(node))
                if shape is None or len(shape) < min_rank:
                    return _unknown_shape(node, port.value(node))
                shapes.append(shape)
            return fn(node, ctx, *shapes)

        return rule

    return wrap


# ------------------------------------------------------------------ elementwise and activations

_UNARY = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "CastLike",
    "Ceil", "Celu", "Clip", "Cos", "Cosh", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu",
    "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish", "Neg",
    "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh",
    "Softplus", "Softsign", "Sqrt", "Swish", "Tan", "Tanh", "ThresholdedRelu",
)


@_rule(*_UNARY)
@_known_shapes(IN(0))
def _unary(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    outputs = [k for k, out in enumerate(node.outputs)
               if out is not None and (ctx.shape(out) is None or len(ctx.shape(out) or ()) == len(shape))]
    relations = []
    for axis, dim in enumerate(shape):
        members = [Member(IN(0), axis)] + [Member(OUT(k), axis) for k in outputs]
        relations.append(Relation(_static(dim), tuple(members), f"{node.op_type} axis {axis}"))
    coupling = NodeCoupling(relations=relations)
    # CastLike's second input only gives a type; Clip/Dropout's extra inputs are scalars
    for index in range(1, len(node.inputs)):
        extra = ctx.shape(node.inputs[index]) or ()
        coupling.neutral.update((IN(index), a) for a in range(len(extra)))
    return coupling


_BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "PRelu", "Mod",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "And", "Or", "Xor", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual",
)


@_rule(*_BROADCAST)
def _broadcast(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
    """Numpy broadcasting: output axis ``a`` couples input axis ``a - (rank_out - rank_in)``
    unless that input dimension is 1 (broadcast)."""
    out_shape = ctx.shape(node.outputs[0])
    if out_shape is None:
        return _unknown_shape(node, node.outputs[0])
    rank = len(out_shape)
    shapes = []
    for value in node.inputs:
        shape = ctx.shape(value) if value is not None else ()
        if shape is None:
            return _unknown_shape(node, value)
        shapes.append(shape)
    coupling = NodeCoupling()
    for axis, dim in enumerate(out_shape):
        members = [Member(OUT(0), axis)]
        for index, shape in enumerate(shapes):
            own = axis - (rank - len(shape))
            if own < 0 or node.inputs[index] is None:
                continue
            if shape[own] == 1 and dim != 1:
                coupling.neutral.add((IN(index), own))
                continue
            members.append(Member(IN(index), own))
        coupling.relations.append(Relation(_static(dim), tuple(members), f"{node.op_type} axis {axis}"))
    return coupling


# ------------------------------------------------------------------ weighted ops


@_rule("Conv")
def _conv(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
    x_shape, w_shape = ctx.shape(node.inputs[0]), ctx.shape(node.inputs[1])
    if x_shape is None or w_shape is None or len(w_shape) < 3:
        return _unknown_shape(node, node.inputs[0] if x_shape is None else node.inputs[1])
    c_out, per_group = _static(w_shape[0]), _static(w_shape[1])
    c_in = _static(x_shape[1])
    if c_out is None or per_group is None or c_in is None:
        return NodeCoupling.refuse("the convolution's channel counts are not static")
    groups = node.attributes.get_int("group", 1)
    if groups < 1:
        return NodeCoupling.refuse(f"group={groups} is not a valid group count")
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    coupling = NodeCoupling(default_reason="the cut reaches a batch or spatial axis of the convolution")
    if groups == 1:
        out = [Member(OUT(0), 1), Member(IN(1), 0, Role.PRODUCER)] + ([Member(IN(2), 0)] if has_bias else [])
        coupling.relations.append(Relation(c_out, tuple(out), "output channels"))
        coupling.relations.append(Relation(
            c_in, (Member(IN(0), 1, Role.CONSUMER_INPUT), Member(IN(1), 1, Role.CONSUMER)), "input channels"))
    elif groups == c_in and per_group == 1 and c_out % c_in == 0:
        # depthwise (with channel multiplier m): input channel c owns outputs c*m ... c*m+m-1
        owner = np.arange(c_out) // (c_out // c_in)
        members = [Member(IN(0), 1, Role.CONSUMER_INPUT), Member.mapped(OUT(0), 1, owner),
                   Member.mapped(IN(1), 0, owner, Role.PRODUCER)]
        if has_bias:
            members.append(Member.mapped(IN(2), 0, owner))
        coupling.relations.append(Relation(c_in, tuple(members), "depthwise channels"))
    elif c_out % groups == 0 and c_in == per_group * groups:
        # grouped: cutting position j of every group keeps the groups equal
        out_per_group = c_out // groups
        position = np.arange(c_out) % out_per_group
        out = [Member.mapped(OUT(0), 1, position), Member.mapped(IN(1), 0, position, Role.PRODUCER)]
        if has_bias:
            out.append(Member.mapped(IN(2), 0, position))
        coupling.relations.append(Relation(out_per_group, tuple(out), "output channels (per group)"))
        coupling.relations.append(Relation(per_group, (
            Member.mapped(IN(0), 1, np.arange(c_in) % per_group, Role.CONSUMER_INPUT),
            Member(IN(1), 1, Role.CONSUMER)), "input channels (per group)"))
    else:
        return NodeCoupling.refuse(f"group={groups} does not divide the channels ({c_in} in, {c_out} out)")
    return coupling


@_rule("ConvTranspose")
def _conv_transpose(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
    w_shape = ctx.shape(node.inputs[1])
    if w_shape is None or len(w_shape) < 3 or _static(w_shape[0]) is None or _static(w_shape[1]) is None:
        return _unknown_shape(node, node.inputs[1])
    if node.attributes.get_int("group", 1) != 1:
        return NodeCoupling.refuse("grouped ConvTranspose is not supported")
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    out = [Member(OUT(0), 1), Member(IN(1), 1, Role.PRODUCER)] + ([Member(IN(2), 0)] if has_bias else [])
    return NodeCoupling(
        relations=[
            Relation(w_shape[1], tuple(out), "output channels"),  # type: ignore[arg-type]
            Relation(w_shape[0], (Member(IN(0), 1, Role.CONSUMER_INPUT), Member(IN(1), 0, Role.CONSUMER)),  # type: ignore[arg-type]
                     "input channels"),
        ],
        default_reason="the cut reaches a batch or spatial axis of the transposed convolution",
    )


def _bias_members(port: Port, shape: tuple[Dim, ...], out_shape: tuple[Dim, ...], out_axis: int) -> list[Member]:
    """The member of a broadcast bias for output axis ``out_axis`` (none when broadcast)."""
    own = out_axis - (len(out_shape) - len(shape))
    if own < 0 or shape[own] == 1 and out_shape[out_axis] != 1:
        return []
    return [Member(port, own)]


@_rule("Gemm")
def _gemm(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
    a_shape, b_shape, y_shape = ctx.shape(node.inputs[0]), ctx.shape(node.inputs[1]), ctx.shape(node.outputs[0])
    if a_shape is None or b_shape is None or y_shape is None or len(a_shape) != 2 or len(b_shape) != 2:
        return _unknown_shape(node, node.inputs[0] if a_shape is None else node.inputs[1])
    trans_a, trans_b = node.attributes.get_int("transA", 0), node.attributes.get_int("transB", 0)
    a_k, a_m = (0, 1) if trans_a else (1, 0)
    b_k, b_n = (1, 0) if trans_b else (0, 1)
    c = node.inputs[2] if len(node.inputs) > 2 else None
    c_shape = ctx.shape(c) if c is not None else None
    if c is not None and c_shape is None:
        return _unknown_shape(node, c)
    rows = [Member(IN(0), a_m), Member(OUT(0), 0)]
    cols = [Member(IN(1), b_n, Role.PRODUCER), Member(OUT(0), 1)]
    if c_shape is not None:
        rows += _bias_members(IN(2), c_shape, y_shape, 0)
        cols += _bias_members(IN(2), c_shape, y_shape, 1)
    return NodeCoupling(relations=[
        Relation(_static(b_shape[b_k]), (Member(IN(0), a_k, Role.CONSUMER_INPUT), Member(IN(1), b_k, Role.CONSUMER)),
                 "contraction"),
        Relation(_static(y_shape[0]), tuple(rows), "rows"),
        Relation(_static(y_shape[1]), tuple(cols), "output features"),
    ])


@_rule("MatMul")
def _matmul(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
    """Numpy matmul with rank >= 2 operands: A[..., M, K] @ B[..., K, N] -> Y[..., M, N]."""
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    a_shape, b_shape, y_shape = ctx.shape(a), ctx.shape(b), ctx.shape(y)
    if a_shape is None or b_shape is None or y_shape is None:
        return _unknown_shape(node, a if a_shape is None else b)
    if len(a_shape) < 2 or len(b_shape) < 2:
        return NodeCoupling.refuse("MatMul with a 1-D operand is not supported")
    ra, rb, ry = len(a_shape), len(b_shape), len(y_shape)
    weighted = b is not None and b.is_initializer()
    relations = [
        Relation(_static(a_shape[-1]), (
            Member(IN(0), ra - 1, Role.CONSUMER_INPUT if weighted else Role.NONE),
            Member(IN(1), rb - 2, Role.CONSUMER if weighted else Role.NONE)), "contraction"),
        Relation(_static(y_shape[-2]), (Member(IN(0), ra - 2), Member(OUT(0), ry - 2)), "rows"),
        Relation(_static(y_shape[-1]), (Member(IN(1), rb - 1, Role.PRODUCER if weighted else Role.NONE),
                                        Member(OUT(0), ry - 1)), "output features"),
    ]
    coupling = NodeCoupling(relations=relations)
    for axis in range(ry - 2):
        members = [Member(OUT(0), axis)]
        for index, shape in ((0, a_shape), (1, b_shape)):
            own = axis - (ry - len(shape))
            if own < 0:
                continue
            if shape[own] == 1 and y_shape[axis] != 1:
                coupling.neutral.add((IN(index), own))
            else:
                members.append(Member(IN(index), own))
        relations.append(Relation(_static(y_shape[axis]), tuple(members), f"batch axis {axis}"))
    return coupling


# ------------------------------------------------------------------ normalization


@_rule("BatchNormalization")
def _batch_norm(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
    if any(out is not None and out.uses() for out in node.outputs[1:]):
        return NodeCoupling.refuse("BatchNormalization in training mode (running statistics are outputs)")
    shape = ctx.shape(node.inputs[0])
    if shape is None or len(shape) < 2:
        return _unknown_shape(node, node.inputs[0])
    members = [Member(IN(0), 1), Member(OUT(0), 1), Member(IN(1), 0, Role.BN_SCALE)]
    members += [Member(IN(i), 0) for i in range(2, min(5, len(node.inputs))) if node.inputs[i] is not None]
    return NodeCoupling(relations=[Relation(_static(shape[1]), tuple(members), "channels")],
                        default_reason="BatchNormalization normalizes per channel of axis 1 only")


@_rule("InstanceNormalization")
@_known_shapes(IN(0), min_rank=2)
def _instance_norm(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    members = (Member(IN(0), 1), Member(OUT(0), 1), Member(IN(1), 0), Member(IN(2), 0))
    return NodeCoupling(relations=[Relation(_static(shape[1]), members, "channels")],
                        default_reason="InstanceNormalization normalizes per channel of axis 1 only")


def _pass_through_except(node: ir.Node, shape: tuple[Dim, ...], excluded: set[int], reason: str,
                         outputs: tuple[int, ...] = (0,), *, parameters: bool = False) -> NodeCoupling:
    """Axis ``a`` of input 0 relates to axis ``a`` of the outputs, except ``excluded`` axes;
    ``parameters``: the other inputs (axes, pads, repeats, scales) hold no channels (neutral)."""
    coupling = NodeCoupling()
    if parameters:
        coupling.neutral.update((IN(i), 0) for i in range(1, len(node.inputs)))
    for axis, dim in enumerate(shape):
        if axis in excluded:
            coupling.blocked[(IN(0), axis)] = reason
            for k in outputs:
                coupling.blocked[(OUT(k), axis)] = reason
            continue
        members = [Member(IN(0), axis)] + [Member(OUT(k), axis) for k in outputs]
        coupling.relations.append(Relation(_static(dim), tuple(members), f"axis {axis}"))
    return coupling


@_rule("LayerNormalization")
@_known_shapes(IN(0))
def _layer_norm(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    start = _axis_attr(node, "axis", len(shape), -1)
    outputs = tuple(k for k, out in enumerate(node.outputs) if out is not None)
    return _pass_through_except(
        node, shape, set(range(start, len(shape))),
        "normalizes over the channel axis (removing channels would change its statistics)", outputs)


@_rule("MeanVarianceNormalization")
@_known_shapes(IN(0))
def _mvn(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    axes = {a + len(shape) if a < 0 else a for a in node.attributes.get_ints("axes", [0, 2, 3])}
    return _pass_through_except(node, shape, axes, "normalizes over the channel axis")


@_rule("LpNormalization")
@_known_shapes(IN(0))
def _lp_norm(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    return _pass_through_except(node, shape, {_axis_attr(node, "axis", len(shape), -1)},
                                "normalizes over the channel axis")


@_rule("Softmax", "LogSoftmax", "Hardmax")
@_known_shapes(IN(0))
def _softmax(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    rank = len(shape)
    if ctx.opset >= 13:
        excluded = {_axis_attr(node, "axis", rank, -1)}
    else:  # before opset 13 the input is flattened to 2-D at `axis` (default 1)
        excluded = set(range(_axis_attr(node, "axis", rank, 1), rank))
    return _pass_through_except(node, shape, excluded, "normalizes over the channel axis")


# ------------------------------------------------------------------ pooling and reductions

_POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


@_rule(*_POOLS)
@_known_shapes(IN(0), min_rank=2)
def _pool(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].uses():
        return NodeCoupling.refuse("MaxPool indices encode channel offsets")
    coupling = NodeCoupling(default_reason="pooling works over the spatial axes")
    for axis in (0, 1):
        coupling.relations.append(Relation(_static(shape[axis]), (Member(IN(0), axis), Member(OUT(0), axis)),
                                           f"axis {axis}"))
    return coupling


_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def _reduced_axes(node: ir.Node, ctx: RuleContext, rank: int) -> set[int] | None:
    axes: list[int] | None
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [node.attributes.get_int("axis", 0)]
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = ctx.ints(node.inputs[1])
        if axes is None:
            return None
    else:
        axes = list(node.attributes.get_ints("axes", []))
    if not axes:
        if node.attributes.get_int("noop_with_empty_axes", 0):
            return set()
        return set(range(rank))
    return {a + rank if a < 0 else a for a in axes}


@_rule(*_REDUCE, "ArgMax", "ArgMin")
@_known_shapes(IN(0))
def _reduce(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    reduced = _reduced_axes(node, ctx, len(shape))
    if reduced is None:
        return NodeCoupling.refuse("the reduced axes are not constant")
    keep = node.attributes.get_int("keepdims", 1)
    coupling = NodeCoupling()
    out_axis = 0
    for axis, dim in enumerate(shape):
        if axis in reduced:
            coupling.blocked[(IN(0), axis)] = "reduces over the channel axis"
            out_axis += 1 if keep else 0
            continue
        coupling.relations.append(Relation(_static(dim), (Member(IN(0), axis), Member(OUT(0), out_axis)),
                                           f"axis {axis}"))
        out_axis += 1
    return coupling


# ------------------------------------------------------------------ data movement


@_rule("Transpose")
@_known_shapes(IN(0))
def _transpose(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    perm = list(node.attributes.get_ints("perm", list(reversed(range(len(shape))))))
    return NodeCoupling(relations=[
        Relation(_static(shape[src]), (Member(OUT(0), dst), Member(IN(0), src)), f"axis {src} -> {dst}")
        for dst, src in enumerate(perm)
    ])


def align_dims(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair axis runs of two shapes with equal sizes, as a reshape maps them.

    Size-1 axes are left out (they carry no channels). Static runs pair when their products
    are equal; a symbolic axis pairs only with the same symbol. Alignment proceeds from the
    left, then from the right; whatever stays in between is not paired.
    """
    ia = [i for i, d in enumerate(a) if d != 1]
    ib = [j for j, d in enumerate(b) if d != 1]

    def match(xs: list[int], ys: list[int]) -> list[tuple[list[int], list[int]]]:
        pairs: list[tuple[list[int], list[int]]] = []
        i = j = 0
        while i < len(xs) and j < len(ys):
            da, db = a[xs[i]], b[ys[j]]
            if not isinstance(da, int) or not isinstance(db, int):
                if da is not None and da == db:
                    pairs.append(([xs[i]], [ys[j]]))
                    i, j = i + 1, j + 1
                    continue
                break
            run_a, run_b = [xs[i]], [ys[j]]
            pa, pb = da, db
            i, j = i + 1, j + 1
            while pa != pb:
                if pa < pb:
                    if i >= len(xs) or not isinstance(a[xs[i]], int):
                        return pairs
                    pa *= a[xs[i]]  # type: ignore[operator]
                    run_a.append(xs[i])
                    i += 1
                else:
                    if j >= len(ys) or not isinstance(b[ys[j]], int):
                        return pairs
                    pb *= b[ys[j]]  # type: ignore[operator]
                    run_b.append(ys[j])
                    j += 1
            pairs.append((run_a, run_b))
        return pairs

    left = match(ia, ib)
    used_a = {i for run, _ in left for i in run}
    used_b = {j for _, run in left for j in run}
    rest_a = [i for i in ia if i not in used_a]
    rest_b = [j for j in ib if j not in used_b]
    right = match(rest_a[::-1], rest_b[::-1])
    right = [(sorted(ra), sorted(rb)) for ra, rb in right]
    return left + right[::-1]


def _reshape_relations(node: ir.Node, in_shape: tuple[Dim, ...], out_shape: tuple[Dim, ...]) -> NodeCoupling:
    coupling = NodeCoupling(default_reason=f"cannot relate the channel axis through this reshape "
                                           f"({_fmt(in_shape)} -> {_fmt(out_shape)})")
    for run_in, run_out in align_dims(in_shape, out_shape):
        if len(run_in) == 1 and len(run_out) == 1:
            coupling.relations.append(Relation(_static(in_shape[run_in[0]]),
                                               (Member(IN(0), run_in[0]), Member(OUT(0), run_out[0])), "axis"))
        elif len(run_out) == 1:
            # several input axes merge into one: channel c of axis `a` owns features
            # outer*C*inner + c*inner + i (a block for NCHW flatten, a stride for NHWC)
            total = math.prod(in_shape[i] for i in run_in)  # type: ignore[misc]
            for pos, axis in enumerate(run_in):
                inner = math.prod(in_shape[i] for i in run_in[pos + 1:])  # type: ignore[misc]
                size = in_shape[axis]
                owner = (np.arange(total) // inner) % size  # type: ignore[operator]
                coupling.relations.append(Relation(size, (Member(IN(0), axis), Member.mapped(OUT(0), run_out[0], owner)),  # type: ignore[arg-type]
                                                   f"merge axis {axis}"))
        else:
            reason = (f"splits axis {run_in[0]} into {len(run_out)} axes ({_fmt(out_shape)}; "
                      "attention heads?), which is not supported") if len(run_in) == 1 else \
                "regroups several axes into several others"
            for axis in run_in:
                coupling.blocked[(IN(0), axis)] = reason
            for axis in run_out:
                coupling.blocked[(OUT(0), axis)] = reason
    return coupling


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def reshape_target(in_shape: tuple[Dim, ...], out_shape: tuple[Dim, ...], allowzero: int) -> list[int] | str:
    """A constant Reshape target that yields ``out_shape``, or why there is none.

    Static dims are written as they are; a symbolic dim at the same position in the input is
    written ``0`` (copy) when ``allowzero`` is 0; one remaining dynamic dim becomes ``-1``.
    """
    target: list[int] = []
    dynamic: list[int] = []
    for pos, dim in enumerate(out_shape):
        if isinstance(dim, int):
            target.append(dim)
        elif not allowzero and dim is not None and pos < len(in_shape) and in_shape[pos] == dim:
            target.append(0)
        else:
            target.append(-1)
            dynamic.append(pos)
    if len(dynamic) > 1:
        return f"its output {_fmt(out_shape)} has {len(dynamic)} dynamic dims; its target cannot be rewritten"
    return target


@_rule("Reshape")
@_known_shapes(IN(0), OUT(0))
def _reshape(node: ir.Node, ctx: RuleContext, in_shape: Shape, out_shape: Shape) -> NodeCoupling:
    coupling = _reshape_relations(node, in_shape, out_shape)
    coupling.neutral.add((IN(1), 0))
    target = reshape_target(in_shape, out_shape, node.attributes.get_int("allowzero", 0))
    if isinstance(target, str):
        # pruning must rewrite the target as a constant; keep the more specific reasons
        for relation in coupling.relations:
            for member in relation.members:
                coupling.blocked.setdefault((member.port, member.axis), target)
        coupling.relations = []
        coupling.default_reason = target
    return coupling


@_rule("Flatten", "Squeeze", "Unsqueeze")
@_known_shapes(IN(0), OUT(0))
def _reshape_like(node: ir.Node, ctx: RuleContext, in_shape: Shape, out_shape: Shape) -> NodeCoupling:
    coupling = _reshape_relations(node, in_shape, out_shape)
    coupling.neutral.add((IN(1), 0))
    return coupling


def _joined(node: ir.Node, ctx: RuleContext, whole: Port, whole_shape: Sequence[Dim], parts: list[Port],
            label: str, dynamic_reason: str) -> NodeCoupling:
    """Concat (parts -> whole) and Split (whole -> parts): every other axis is one relation of
    the whole and all parts; along the joined axis (``axis``), channel ``c`` of part ``i`` is channel
    ``offset_i + c`` of the whole (``offset_i`` = the sizes of the parts before it). Refused when
    a part's shape is unknown or of another rank."""
    part_shapes = [ctx.shape(part.value(node)) for part in parts]
    if any(s is None or len(s) != len(whole_shape) for s in part_shapes):
        return NodeCoupling.refuse(f"an {'output' if whole.output is False else 'input'} of {node.op_type} "
                                   "has an unknown shape")
    join_axis = _axis_attr(node, "axis", len(whole_shape), 0)
    coupling = NodeCoupling()
    for axis in range(len(whole_shape)):
        if axis != join_axis:
            members = [Member(whole, axis)] + [Member(part, axis) for part in parts]
            coupling.relations.append(Relation(_static(whole_shape[axis]), tuple(members), f"axis {axis}"))
            continue
        sizes = [shape[axis] for shape in part_shapes]  # type: ignore[index]
        total = whole_shape[axis]
        if not all(isinstance(n, int) for n in sizes) or (isinstance(total, int) and total != sum(sizes)):  # type: ignore[arg-type]
            coupling.blocked.update({(port, axis): dynamic_reason for port in (whole, *parts)})
            continue
        members = [Member(whole, axis)]
        offset = 0
        for part, size in zip(parts, sizes):
            members.append(Member.mapped(part, axis, offset + np.arange(size)))  # type: ignore[arg-type]
            offset += size  # type: ignore[operator]
        coupling.relations.append(Relation(offset, tuple(members), label))
    return coupling


@_rule("Concat")
@_known_shapes(OUT(0))
def _concat(node: ir.Node, ctx: RuleContext, out_shape: Shape) -> NodeCoupling:
    return _joined(node, ctx, OUT(0), out_shape, [IN(i) for i in range(len(node.inputs))], "concatenated channels",
                   "concatenates inputs of dynamic size along the channel axis")


@_rule("Split")
@_known_shapes(IN(0))
def _split(node: ir.Node, ctx: RuleContext, in_shape: Shape) -> NodeCoupling:
    coupling = _joined(node, ctx, IN(0), in_shape, [OUT(k) for k in range(len(node.outputs))], "split channels",
                       "splits a dynamic channel axis")
    if len(node.inputs) > 1:
        coupling.neutral.add((IN(1), 0))
    return coupling


def _slice_axes(node: ir.Node, ctx: RuleContext, rank: int) -> set[int] | None:
    if ctx.opset < 10 or len(node.inputs) == 1:
        axes = list(node.attributes.get_ints("axes", list(range(len(node.attributes.get_ints("starts", []))))))
    else:
        starts = ctx.ints(node.inputs[1])
        if len(node.inputs) > 3 and node.inputs[3] is not None:
            axes = ctx.ints(node.inputs[3])
        else:
            axes = None if starts is None else list(range(len(starts)))
        if axes is None:
            return None
    return {a + rank if a < 0 else a for a in axes}


@_rule("Slice")
@_known_shapes(IN(0))
def _slice(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    axes = _slice_axes(node, ctx, len(shape))
    if axes is None:
        return NodeCoupling.refuse("the sliced axes are not constant")
    return _pass_through_except(node, shape, axes, "slices the channel axis", parameters=True)


@_rule("Gather")
@_known_shapes(IN(0), IN(1))
def _gather(node: ir.Node, ctx: RuleContext, shape: Shape, indices: Shape) -> NodeCoupling:
    gather_axis = _axis_attr(node, "axis", len(shape), 0)
    coupling = NodeCoupling()
    for axis, dim in enumerate(shape):
        if axis == gather_axis:
            coupling.blocked[(IN(0), axis)] = "gathers along the channel axis"
            continue
        out_axis = axis if axis < gather_axis else axis + len(indices) - 1
        coupling.relations.append(Relation(_static(dim), (Member(IN(0), axis), Member(OUT(0), out_axis)),
                                           f"axis {axis}"))
    return coupling


def _pads(node: ir.Node, ctx: RuleContext) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return ctx.ints(node.inputs[1])
    return list(node.attributes.get_ints("pads", [])) or None


@_rule("Pad")
@_known_shapes(IN(0))
def _pad(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    rank = len(shape)
    pads = _pads(node, ctx)
    if pads is None:
        return NodeCoupling.refuse("the pads are not constant")
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        given = ctx.ints(node.inputs[3])
        if given is None:
            return NodeCoupling.refuse("the padded axes are not constant")
        axes = [a + rank if a < 0 else a for a in given]
    half = len(pads) // 2
    padded = {axes[i] for i in range(min(half, len(axes))) if pads[i] or pads[i + half]}
    return _pass_through_except(node, shape, padded, "pads the channel axis", parameters=True)


@_rule("Tile")
@_known_shapes(IN(0))
def _tile(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    repeats = ctx.ints(node.inputs[1])
    if repeats is None:
        return NodeCoupling.refuse("the repeats are not constant")
    tiled = {a for a, r in enumerate(repeats) if r != 1}
    return _pass_through_except(node, shape, tiled, "repeats the channel axis", parameters=True)


@_rule("Expand")
def _expand(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
    shape, out_shape, target = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0]), ctx.ints(node.inputs[1])
    if shape is None or out_shape is None:
        return _unknown_shape(node, node.inputs[0])
    if target is None:
        return NodeCoupling.refuse("the target shape is not constant")
    coupling = NodeCoupling(default_reason="expands the channel axis")
    shift = len(out_shape) - len(shape)
    for axis, dim in enumerate(shape):
        out_axis = axis + shift
        target_pos = out_axis - (len(out_shape) - len(target))
        target_dim = target[target_pos] if target_pos >= 0 else 1
        if dim == 1 or target_dim != 1:
            continue  # broadcast here, or the target names the size: not rewritten
        coupling.relations.append(Relation(_static(dim), (Member(IN(0), axis), Member(OUT(0), out_axis)),
                                           f"axis {axis}"))
    coupling.neutral.add((IN(1), 0))
    return coupling


def _resize_scales(node: ir.Node, ctx: RuleContext) -> tuple[list[float] | None, list[int] | None, bool]:
    """(scales, sizes, understood) of a Resize/Upsample."""
    if node.op_type == "Upsample":
        if len(node.inputs) > 1:
            values = ctx.const(node.inputs[1])
            return (None if values is None else [float(v) for v in values.reshape(-1)]), None, values is not None
        return list(node.attributes.get_floats("scales", [])), None, True
    scales_value = node.inputs[2] if len(node.inputs) > 2 else None
    sizes_value = node.inputs[3] if len(node.inputs) > 3 else None
    scales = sizes = None
    if scales_value is not None:
        array = ctx.const(scales_value)
        if array is None:
            return None, None, False
        scales = [float(v) for v in array.reshape(-1)] or None
    if sizes_value is not None:
        sizes = ctx.ints(sizes_value)
        if sizes is None:
            return None, None, False
    return scales, sizes, True


@_rule("Resize", "Upsample")
@_known_shapes(IN(0))
def _resize(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    scales, sizes, understood = _resize_scales(node, ctx)
    if not understood:
        return NodeCoupling.refuse("the scales or sizes are not constant")
    rank = len(shape)
    axes = [a + rank if a < 0 else a for a in node.attributes.get_ints("axes", list(range(rank)))]
    resized: set[int] = set()
    for pos, axis in enumerate(axes):
        if scales is not None and pos < len(scales) and scales[pos] != 1.0:
            resized.add(axis)
        if sizes is not None and pos < len(sizes) and sizes[pos] != shape[axis]:
            resized.add(axis)
    return _pass_through_except(node, shape, resized, "resizes the channel axis", parameters=True)


@_rule("Shape")
@_known_shapes(IN(0))
def _shape(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    rank = len(shape)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank) if "end" in node.attributes else rank
    start = max(0, start + rank if start < 0 else start)
    end = min(rank, end + rank if end < 0 else end)
    coupling = NodeCoupling()
    for axis in range(rank):
        (coupling.size_reads if start <= axis < end else coupling.neutral).add((IN(0), axis))
    return coupling


@_rule("Size")
@_known_shapes(IN(0))
def _size(node: ir.Node, ctx: RuleContext, shape: Shape) -> NodeCoupling:
    return NodeCoupling(size_reads={(IN(0), axis) for axis in range(len(shape))})


@_rule("Constant")
def _constant(node: ir.Node, ctx: RuleContext) -> NodeCoupling:
    del ctx
    return NodeCoupling.refuse("a weight is held in a Constant node; run Normalize first")
