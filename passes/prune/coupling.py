"""The coupling graph: which channel axes of which tensors must be cut together.

Model (after Torch-Pruning's DepGraph, applied to ONNX values instead of torch modules)
    A *channel axis* is one axis of one ONNX value: an activation (``relu_1``, axis 1), or an
    initializer (``conv2.weight``, axis 0). Each op contributes *relations* between the axes of
    its inputs and outputs (:mod:`.rules`, in the vocabulary of :mod:`.relations`): a relation is an index space of ``size`` elements,
    and each member axis maps its own indices onto it. ``Conv``'s output relation ties output
    channel ``c`` to ``W[c]`` and ``B[c]``; ``Add`` ties channel ``c`` of both operands and of
    the result; ``Concat`` maps input ``i``'s channel ``c`` to output channel ``offset_i + c``;
    a ``Reshape`` that flattens ``(C, H, W)`` maps channel ``c`` to the block of features
    ``c*H*W ... (c+1)*H*W - 1``.

    Starting from the output-channel axis of every weight (Conv, ConvTranspose, Gemm, MatMul),
    the analysis walks every producer and consumer of every axis it reaches and applies the
    relation that contains it. The axes joined by applied relations form *groups* (connected
    components); inside a group, the individual indices joined by the relations form *units*
    (connected components over indices, computed with a vectorized union-find). A unit is the
    smallest thing that can be removed: every index it holds is deleted from its axis at once,
    which keeps every op consistent. A plain Conv -> Relu -> Conv chain gives one unit per
    channel; a residual Add joins the channels of both branches into the same units; a grouped
    convolution joins position ``j`` of every group so that each group keeps the same width.

Refusals
    A group is *blocked* (left untouched, with the reasons) when the walk meets something it
    does not understand: an op without a rule, a rule that cannot relate the axis (a Reshape
    that splits the channel axis into attention heads, a LayerNormalization over it, a Slice
    of it), an unknown shape, a use inside a control-flow subgraph, or a ``Shape`` node whose
    result feeds anything but a Reshape target that pruning rewrites. A unit is *fixed*
    (kept) when it touches a model input or output, or a protected node.

Limits
    Only the main graph is analysed. Channel axes need static sizes.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np
import onnx_ir as ir

from onnx_compress.passes.prune.relations import IN, OUT, Member, NodeCoupling, Port, Relation, Role
from onnx_compress.passes.prune.rules import RuleContext, coupling_of

__all__ = [
    "AxisNode",
    "Group",
    "CouplingAnalysis",
    "analyze",
]


@dataclasses.dataclass(eq=False)
class AxisNode:
    """One channel axis in the coupling graph."""

    id: int
    value: ir.Value
    axis: int
    size: int
    roles: list[tuple[Role, ir.Node]] = dataclasses.field(default_factory=list)
    fixed: list[str] = dataclasses.field(default_factory=list)
    blocked: list[str] = dataclasses.field(default_factory=list)
    #: Shape nodes that read this axis' size
    size_readers: list[ir.Node] = dataclasses.field(default_factory=list)

    @property
    def is_initializer(self) -> bool:
        return self.value.is_initializer()

    def describe(self) -> str:
        return f"{self.value.name}[axis {self.axis}]"


@dataclasses.dataclass(eq=False)
class Group:
    """A connected set of channel axes and the units they split into.

    Attributes:
        id: position in :attr:`CouplingAnalysis.groups`.
        axes: the member axes.
        relations: the applied relations, as (node, relation).
        unit_of: for every axis, the unit of each of its indices (``unit_of[axis.id]``).
        n_units: how many units there are.
        fixed_units: units that must be kept (a model input/output or protected node).
        fixed_reasons: why units are fixed (deduplicated).
        blocked: reasons the whole group is left untouched (empty when it can be pruned).
    """

    id: int
    axes: list[AxisNode]
    relations: list[tuple[ir.Node, Relation]]
    unit_of: dict[int, np.ndarray]
    n_units: int
    fixed_units: np.ndarray
    fixed_reasons: list[str]
    blocked: list[str]

    @property
    def producers(self) -> list[ir.Node]:
        """The weighted nodes whose output channels are in this group, in graph order."""
        seen: dict[int, ir.Node] = {}
        for axis in self.axes:
            for role, node in axis.roles:
                if role is Role.PRODUCER:
                    seen.setdefault(id(node), node)
        return list(seen.values())

    @property
    def name(self) -> str:
        names = [str(node.name or node.op_type) for node in self.producers]
        if not names:
            return f"group {self.id}"
        return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")

    def axes_with_role(self, role: Role) -> Iterator[tuple[AxisNode, ir.Node]]:
        for axis in self.axes:
            for axis_role, node in axis.roles:
                if axis_role is role:
                    yield axis, node

    @property
    def prunable_units(self) -> np.ndarray:
        """Ids of units that may be removed (none when the group is blocked)."""
        if self.blocked:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(~self.fixed_units)

    def kept_indices(self, removed_units: np.ndarray) -> dict[int, np.ndarray]:
        """For each axis (by id), the indices that stay when ``removed_units`` are cut."""
        removed = np.zeros(self.n_units, dtype=bool)
        removed[np.asarray(removed_units, dtype=np.int64)] = True
        return {axis.id: np.flatnonzero(~removed[self.unit_of[axis.id]]) for axis in self.axes}


@dataclasses.dataclass
class CouplingAnalysis:
    """All groups of a model; ``axes`` indexes every axis node by id."""

    groups: list[Group]
    axes: list[AxisNode]


# --------------------------------------------------------------------------------------------


class _Explorer:
    """Phase 1: walk from the weight axes, applying the relations the rules give."""

    def __init__(self, model: ir.Model, protected: set[str]) -> None:
        self.model = model
        self.graph = model.graph
        self.protected = protected
        self.context = RuleContext(model)
        self._coupling_of = coupling_of
        self._couplings: dict[int, NodeCoupling] = {}
        self.axes: list[AxisNode] = []
        self._axis_by_key: dict[tuple[int, int], AxisNode] = {}
        self.applied: dict[tuple[int, int], tuple[ir.Node, Relation, list[AxisNode]]] = {}
        self._queue: collections.deque[AxisNode] = collections.deque()

    def coupling(self, node: ir.Node) -> NodeCoupling:
        key = id(node)
        if key not in self._couplings:
            self._couplings[key] = self._coupling_of(node, self.context)
        return self._couplings[key]

    def axis_node(self, value: ir.Value, axis: int) -> AxisNode | str:
        """The axis node of (value, axis), created on first use; a reason when impossible."""
        key = (id(value), axis)
        if key in self._axis_by_key:
            return self._axis_by_key[key]
        shape = self.context.shape(value)
        if shape is None or axis >= len(shape):
            return f"the shape of '{value.name}' is unknown (run shape inference / Normalize first)"
        size = shape[axis]
        if not isinstance(size, int):
            return f"'{value.name}' axis {axis} has no static size"
        node = AxisNode(id=len(self.axes), value=value, axis=axis, size=size)
        self.axes.append(node)
        self._axis_by_key[key] = node
        if value.is_graph_output():
            node.fixed.append(f"reaches model output '{value.name}'")
        if value.is_graph_input():
            node.fixed.append(f"reaches model input '{value.name}'")
        self._queue.append(node)
        return node

    def seeds(self) -> Iterable[tuple[ir.Node, Relation, Member]]:
        for node in self.graph:
            if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
                continue
            for relation in self.coupling(node).relations:
                for member in relation.members:
                    if member.role is Role.PRODUCER:
                        yield node, relation, member

    def run(self) -> None:
        for node, _relation, member in self.seeds():
            value = member.port.value(node)
            if value is None or not value.is_initializer():
                continue
            start = self.axis_node(value, member.axis)
            if isinstance(start, AxisNode):
                self._drain()

    def _drain(self) -> None:
        while self._queue:
            axis = self._queue.popleft()
            value = axis.value
            producer = value.producer()
            if producer is not None:
                self._visit(axis, producer, OUT(value.index() or 0))
            elif not value.is_initializer() and not value.is_graph_input():
                axis.blocked.append(f"'{value.name}' has no producer")
            for use in value.uses():
                self._visit(axis, use.node, IN(use.idx))

    def _visit(self, axis: AxisNode, node: ir.Node, port: Port) -> None:
        label = f"{node.op_type} '{node.name}'"
        if node.graph is not self.graph:
            axis.blocked.append(f"'{axis.value.name}' is used inside a subgraph ({label})")
            return
        coupling = self.coupling(node)
        key = (port, axis.axis)
        if key in coupling.neutral:
            return
        if key in coupling.size_reads:
            axis.size_readers.append(node)
            return
        candidates = coupling.relations_at(port, axis.axis)
        if any((id(node), i) in self.applied for i in candidates):
            return  # reached through a relation already applied (e.g. the merged side of a Flatten)
        if key in coupling.blocked:
            axis.blocked.append(f"{label}: {coupling.blocked[key]}")
            return
        if not candidates:
            reason = coupling.default_reason or f"does not relate {port} axis {axis.axis}"
            axis.blocked.append(f"{label}: {reason}")
            return
        if len(candidates) > 1:
            axis.blocked.append(f"{label}: {port} axis {axis.axis} merges several axes; the channel axis is ambiguous")
            return
        self._apply(node, candidates[0], coupling.relations[candidates[0]], axis)

    def _apply(self, node: ir.Node, index: int, relation: Relation, via: AxisNode) -> None:
        label = f"{node.op_type} '{node.name}'"
        members: list[AxisNode] = []
        if not isinstance(relation.size, int):
            via.blocked.append(f"{label}: the related axis has no static size")
            self.applied[(id(node), index)] = (node, relation, [via])
            return
        problems: list[str] = []
        for member in relation.members:
            value = member.port.value(node)
            if value is None:
                problems.append(f"{member.port} is missing")
                continue
            axis = self.axis_node(value, member.axis)
            if isinstance(axis, str):
                problems.append(axis)
                continue
            if member.relation_index is None:
                if axis.size != relation.size:
                    problems.append(f"'{value.name}' axis {member.axis} has {axis.size} channels, expected {relation.size}")
            elif len(member.relation_index) != axis.size or (
                len(member.relation_index) and (member.relation_index.min() < 0 or member.relation_index.max() >= relation.size)
            ):
                problems.append(f"index map of '{value.name}' axis {member.axis} does not fit")
            if member.role is not Role.NONE:
                axis.roles.append((member.role, node))
            if node.name in self.protected:
                axis.fixed.append(f"protected node '{node.name}'")
            members.append(axis)
        if via not in members:
            members.append(via)
        for problem in problems:
            via.blocked.append(f"{label}: {problem}")
        self.applied[(id(node), index)] = (node, relation, members)


def _connected_labels(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected-component label (the smallest element id) of each of ``n`` elements."""
    labels = np.arange(n, dtype=np.int64)
    if not len(left):
        return labels
    while True:
        smallest = np.minimum(labels[left], labels[right])
        before = labels.copy()
        np.minimum.at(labels, left, smallest)
        np.minimum.at(labels, right, smallest)
        # pointer jumping: follow labels to their own labels until stable
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


def _shape_read_problem(group_values: set[int], reader: ir.Node, graph: ir.Graph) -> str | None:
    """Why a Shape node reading a group's channel count is not safe to prune past, or None.

    Safe when everything computed from its result ends in the target-shape input of a Reshape
    whose data is in the same group: pruning rewrites that target to a constant, so the whole
    shape computation becomes dead and is removed. Every live value reaches a model output,
    so the check follows the uses forward (skipping those Reshape targets) and fails when it
    reaches one.
    """
    seen: set[int] = set()
    stack = list(reader.outputs)
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if value.is_graph_output():
            return (f"the channel count read by Shape '{reader.name}' flows into model output "
                    f"'{value.name}' through ops pruning does not rewrite")
        for use in value.uses():
            node = use.node
            if node.op_type == "Reshape" and use.idx == 1 and id(node.inputs[0]) in group_values:
                continue
            if node.graph is not graph:
                return f"the channel count read by Shape '{reader.name}' is used inside a subgraph"
            stack.extend(node.outputs)
    return None


def analyze(model: ir.Model, protected: Iterable[str] = ()) -> CouplingAnalysis:
    """Build the coupling graph of ``model`` (shapes must be inferred) and its groups."""
    explorer = _Explorer(model, set(protected))
    explorer.run()
    axes = explorer.axes

    # Phase 2: groups = connected components of axes over the applied relations.
    parent = list(range(len(axes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _node, _relation, members in explorer.applied.values():
        for other in members[1:]:
            a, b = find(members[0].id), find(other.id)
            if a != b:
                parent[max(a, b)] = min(a, b)
    by_root: dict[int, list[AxisNode]] = collections.defaultdict(list)
    for axis in axes:
        by_root[find(axis.id)].append(axis)
    relations_by_root: dict[int, list[tuple[ir.Node, Relation, list[AxisNode]]]] = collections.defaultdict(list)
    for node, relation, members in explorer.applied.values():
        relations_by_root[find(members[0].id)].append((node, relation, members))

    groups: list[Group] = []
    for root, group_axes in sorted(by_root.items()):
        applied = relations_by_root.get(root, [])
        groups.append(_build_group(len(groups), group_axes, applied, model.graph))
    return CouplingAnalysis(groups=groups, axes=axes)


def _build_group(
    group_id: int,
    axes: list[AxisNode],
    applied: list[tuple[ir.Node, Relation, list[AxisNode]]],
    graph: ir.Graph,
) -> Group:
    """Phase 3: units of one group (union-find over indices) and its refusals."""
    blocked: list[str] = []
    for axis in axes:
        blocked.extend(axis.blocked)
    group_values = {id(axis.value) for axis in axes}
    for axis in axes:
        for reader in axis.size_readers:
            problem = _shape_read_problem(group_values, reader, graph)
            if problem:
                blocked.append(problem)

    offsets: dict[int, int] = {}
    total = 0
    for axis in axes:
        offsets[axis.id] = total
        total += axis.size
    axis_elements = total
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    relations: list[tuple[ir.Node, Relation]] = []
    by_key = {(id(axis.value), axis.axis): axis for axis in axes}
    for node, relation, _members in applied:
        if not isinstance(relation.size, int):
            continue
        relations.append((node, relation))
        base = total
        total += relation.size
        for member in relation.members:
            axis_node = by_key.get((id(member.port.value(node)), member.axis))
            if axis_node is None:
                continue
            axis_id, size = axis_node.id, axis_node.size
            if member.relation_index is None:
                if size != relation.size:
                    continue  # reported as blocked when applied
                rel_idx = np.arange(size, dtype=np.int64)
                ax_idx = rel_idx
            else:
                if len(member.relation_index) != size:
                    continue
                rel_idx, ax_idx = member.relation_index, member.axis_index
            left.append(base + rel_idx)
            right.append(offsets[axis_id] + ax_idx)
    labels = _connected_labels(
        total,
        np.concatenate(left) if left else np.zeros(0, np.int64),
        np.concatenate(right) if right else np.zeros(0, np.int64),
    )
    unit_ids, inverse = np.unique(labels[:axis_elements], return_inverse=True)
    n_units = len(unit_ids)
    unit_of = {axis.id: inverse[offsets[axis.id]: offsets[axis.id] + axis.size] for axis in axes}
    fixed = np.zeros(n_units, dtype=bool)
    fixed_reasons: list[str] = []
    for axis in axes:
        if axis.fixed:
            fixed[unit_of[axis.id]] = True
            for reason in axis.fixed:
                if reason not in fixed_reasons:
                    fixed_reasons.append(reason)
    return Group(
        id=group_id,
        axes=axes,
        relations=relations,
        unit_of=unit_of,
        n_units=n_units,
        fixed_units=fixed,
        fixed_reasons=fixed_reasons,
        blocked=list(dict.fromkeys(blocked)),
    )
