"""The vocabulary of the coupling rules: ports, axis roles, relations, what a node says.

A *relation* ties axes of one node's inputs and outputs whose indices correspond; each
*member* axis maps its own indices onto the relation's index space (identity, or an explicit
map such as a Concat offset or a Flatten block). :mod:`.rules` produces a
:class:`NodeCoupling` per node in these terms; :mod:`.coupling` walks them into groups.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
import onnx_ir as ir

__all__ = ["Role", "Port", "IN", "OUT", "Member", "Relation", "NodeCoupling"]


class Role(enum.Enum):
    """What an axis means to the op that relates it (used by importance)."""

    NONE = "none"
    #: the output-channel axis of a weight (Conv W axis 0, Gemm/MatMul output columns)
    PRODUCER = "producer"
    #: the input-channel axis of a weight (Conv W axis 1, MatMul W rows)
    CONSUMER = "consumer"
    #: the channel axis of the activation a weighted op reads
    CONSUMER_INPUT = "consumer_input"
    #: the per-channel scale of a BatchNormalization
    BN_SCALE = "bn_scale"


@dataclasses.dataclass(frozen=True)
class Port:
    """An input (``output=False``) or output position of a node."""

    output: bool
    index: int

    def value(self, node: ir.Node) -> ir.Value | None:
        values = node.outputs if self.output else node.inputs
        return values[self.index] if self.index < len(values) else None

    def __str__(self) -> str:
        return f"{'output' if self.output else 'input'} {self.index}"


def IN(index: int) -> Port:  # noqa: N802 - reads like a constant in the rules
    return Port(False, index)


def OUT(index: int) -> Port:  # noqa: N802
    return Port(True, index)


@dataclasses.dataclass(frozen=True)
class Member:
    """One axis taking part in a relation.

    ``relation_index[k]`` is the relation element that axis index ``axis_index[k]`` belongs
    to; both ``None`` means the identity (the axis has the relation's size).
    """

    port: Port
    axis: int
    role: Role = Role.NONE
    relation_index: np.ndarray | None = None
    axis_index: np.ndarray | None = None

    @classmethod
    def mapped(cls, port: Port, axis: int, relation_index: np.ndarray, role: Role = Role.NONE) -> Member:
        """Axis index ``k`` belongs to relation element ``relation_index[k]``."""
        relation_index = np.asarray(relation_index, dtype=np.int64)
        return cls(port, axis, role, relation_index, np.arange(len(relation_index), dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class Relation:
    """Axes of one node whose indices correspond (see the module docstring)."""

    size: int | None
    members: tuple[Member, ...]
    label: str = ""

    def member_at(self, port: Port, axis: int) -> Member | None:
        for member in self.members:
            if member.port == port and member.axis == axis:
                return member
        return None


@dataclasses.dataclass
class NodeCoupling:
    """What one node says about its axes (produced by a rule in :mod:`.rules`).

    Attributes:
        relations: the relations of the node.
        neutral: (port, axis) pairs whose size this node does not care about and does not pass
            on (a Shape node that reads other axes only).
        size_reads: (port, axis) pairs whose *size* the node reads into a tensor (Shape).
        blocked: (port, axis) -> why pruning cannot pass through there.
        default_reason: why any other (port, axis) is not understood.
    """

    relations: list[Relation] = dataclasses.field(default_factory=list)
    neutral: set[tuple[Port, int]] = dataclasses.field(default_factory=set)
    size_reads: set[tuple[Port, int]] = dataclasses.field(default_factory=set)
    blocked: dict[tuple[Port, int], str] = dataclasses.field(default_factory=dict)
    default_reason: str = ""

    def relations_at(self, port: Port, axis: int) -> list[int]:
        return [i for i, rel in enumerate(self.relations) if rel.member_at(port, axis) is not None]

    @classmethod
    def refuse(cls, reason: str) -> NodeCoupling:
        return cls(default_reason=reason)
