"""Skip padded positions: run a transformer's per-token layers on the real tokens only.

Why
    A batch of sentences padded to a fixed length spends most of its work on padding: MiniLM's
    sentences have a median of 17 real tokens, so at sequence 64 about 60 % of every projection,
    feed-forward layer, GELU and norm computes rows that no real output depends on. Attention
    is the only operation that mixes positions, and with a key-padding mask it never reads a
    padded key. This rewrite gathers the real tokens' rows once, runs every per-token layer on
    ``[tokens, width]`` instead of ``[batch, sequence, width]``, and scatters them back where a
    full layout is needed (each attention's input, the graph's per-token outputs). PyTorch's
    ``TransformerEncoder`` fast path (nested tensors) and ONNX Runtime's CUDA ``RemovePadding``
    do the same; this writes it in standard ONNX ops (``NonZero``, ``Gather``, ``CumSum``) so
    any ONNX Runtime CPU session runs it. all-MiniLM-L6-v2 int8 (``compress --preset small``),
    sequence 64, 200 held-out sentences (39 % real tokens), 2 threads, Intel Xeon with AVX-512
    VNNI and AMX, one side-by-side run per export (``python -m benchmarks pipeline``,
    2026-12-01): TorchScript export batch 8 2.20x -> 3.28x the fp32 speed, dynamo export 2.57x
    -> 3.80x, same cosine; on rows without padding the gathers cost about 3-7 %.

Maths
    With the mask ``M [B, S]`` flattened to ``m [B*S]``, ``idx = NonZero(m)`` (the ``T`` real
    positions in order) and ``inv[p] = CumSum(m)[p] - 1`` for real ``p``, ``T`` for padded ones:
    ``pack(X) = Gather(Reshape(X, [B*S, D]), idx)`` and ``unpack(P) = Reshape(Gather(Concat(P,
    0), inv), [B, S, D])``; ``unpack(pack(X))`` equals ``X`` on real positions and is 0 on padded
    ones. A node ``f`` is *per-token* when ``f(X)[b, s] = f(X[b, s])``: elementwise ops whose other
    operands have rank <= 1 (a bias, a scale, a scalar computed anywhere), ``LayerNormalization``
    over the last axis, MatMul-family ops with a constant 2-D weight, ``DynamicQuantizeLinear``
    (its scale and zero point are reductions over the tensor: on packed rows they cover the real
    tokens only, which is the int8 model's only difference to the unpacked one). For per-token
    ``f``, ``f(pack(X)) = pack(f(X))``, so every value the rewrite keeps packed equals the
    original on real positions. An attention with a key-padding mask gives its real queries the
    same values whatever its padded rows hold (their scores get ``<= -1e4`` before the softmax,
    whose ``exp`` is 0 in float32), so feeding it ``unpack(P)`` changes nothing on real tokens.

What changes
    The graph's per-token outputs are **0 at padded positions** (as with PyTorch's nested-tensor
    path); on real positions they equal the original's (checked by the caller on probe inputs).
    An output computed from the per-token values through a non-per-token node (a pooling) reads
    the unpacked values: with a masked pooling (a mean over real tokens) it is unchanged, with
    one that reads padded positions it changes, and the caller's parity check refuses that.

Limits
    Every attention node (``MultiHeadAttention``, ``Attention``, ``QAttention``) must have a
    padding mask from one 2-D graph input, named ``attention_mask`` (the input the metrics read
    real tokens from: with another name a per-token output's zeros at padded positions would
    count as errors in every comparison): an ``attention_bias`` proven to be the key-padding bias
    (``attention_pack.key_padding_source``), a ``key_padding_mask`` graph input, or ``Attention``'s
    2-D ``mask_index`` cast from one. A layer without a mask attends to padded positions, so the
    model is left as it is. Only main-graph values of shape ``[B, S, D]`` (``B``, ``S`` the mask's
    axes by ONNX Runtime's symbolic shape inference, or the shapes the model carries where that
    fails; ``D`` a number), and their rows ``[B*S, D]`` (a layer written through a ``Reshape`` to
    2-D, as Keras' ``Tensordot``: such a ``Reshape`` becomes the identity on packed rows). A
    per-token region without a matrix product is not
    worth its gathers and is left alone. Models with control flow are left as they are. The
    speed gained is the padding's share: on unpadded batches the gathers cost a few percent.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnx_compress.passes.fuse.shapes import infer_symbolic, monomial, monomial_product
from onnx_compress.runtime.metrics import MASK_INPUT

__all__ = ["NODE_PREFIX", "SkippedPadding", "attention_mask", "parity_problem", "skip_padding"]

logger = logging.getLogger(__name__)

_MS = "com.microsoft"
#: the name prefix of every node the rewrite adds (how a report tells that it ran)
NODE_PREFIX = "skip_padding/"
_ELEMENTWISE = frozenset({
    ("", "Add"), ("", "Sub"), ("", "Mul"), ("", "Div"), ("", "Sum"), ("", "Cast"), ("", "Relu"),
    ("", "Erf"), ("", "Tanh"), ("", "Sigmoid"), ("", "Sqrt"), ("", "Gelu"), ("", "Identity"),
    (_MS, "BiasGelu"), (_MS, "FastGelu"), (_MS, "Gelu"), (_MS, "QuickGelu"),
    ("", "QuantizeLinear"), ("", "DequantizeLinear"),
})
_NORMS = frozenset({("", "LayerNormalization"), (_MS, "SkipLayerNormalization"),
                    ("", "RMSNormalization"), (_MS, "SimplifiedLayerNormalization")})
_MATMULS = frozenset({("", "MatMul"), ("", "MatMulInteger"), (_MS, "DynamicQuantizeMatMul"),
                      (_MS, "MatMulIntegerToFloat"), (_MS, "MatMulNBits")})
#: outputs that are reductions over the whole tensor (scale, zero point), not per-token values
_GLOBAL_OUTPUTS = {("", "DynamicQuantizeLinear"): (1, 2)}
_ATTENTIONS = frozenset({(_MS, "MultiHeadAttention"), (_MS, "Attention"), (_MS, "QAttention")})
#: ``Attention`` / ``QAttention``: the input index of ``mask_index`` and of the inputs a padding
#: mask cannot stand beside (past state, an additive bias)
_MASK_INDEX = {"Attention": (3, (4, 5)), "QAttention": (5, (8,))}


@dataclasses.dataclass(frozen=True)
class SkippedPadding:
    """What :func:`skip_padding` did: ``nodes`` rewritten to run on real tokens only, ``packs``
    and ``unpacks`` inserted, the ``mask`` input used; ``reason`` when nothing was done."""

    nodes: int = 0
    packs: int = 0
    unpacks: int = 0
    mask: str | None = None
    reason: str = ""


def _key(node: ir.Node) -> tuple[str, str]:
    return ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)


def _graph_input_through_cast(value: ir.Value | None) -> ir.Value | None:
    """The 2-D graph input ``value`` is (possibly through one ``Cast``), else None."""
    if value is not None and value.producer() is not None and value.producer().op_type == "Cast":
        value = value.producer().inputs[0]
    if value is None or not value.is_graph_input() or value.shape is None or len(value.shape) != 2:
        return None
    return value


def attention_mask(model: ir.Model) -> tuple[ir.Value | None, str]:
    """The one 2-D graph input that every attention node of ``model`` masks padded keys with, or
    None with the reason (an attention without a mask, with a bias not proven to be the padding
    mask, two different masks, no attention at all)."""
    from onnx_compress.passes.quantize.attention_pack import key_padding_source

    attentions = [n for n in model.graph if _key(n) in _ATTENTIONS]
    if not attentions:
        return None, "the model has no attention node"
    masks: dict[str, ir.Value] = {}
    proofs: dict[int, tuple[ir.Value | None, str]] = {}
    for node in attentions:
        name = node.name or node.op_type
        inputs = list(node.inputs) + [None] * 8
        if node.op_type in _MASK_INDEX:
            at, others = _MASK_INDEX[node.op_type]
            if any(inputs[i] is not None for i in others) or node.attributes.get_int("unidirectional", 0):
                return None, f"attention {name} has past state, an extra bias or is causal"
            mask = _graph_input_through_cast(inputs[at])
            if mask is None:
                return None, f"attention {name} has no 2-D padding mask (mask_index)"
        else:
            if any(v is not None for v in inputs[6:8]):
                return None, f"attention {name} has past state"
            padding, bias = inputs[4], inputs[5]
            mask = _graph_input_through_cast(padding) if padding is not None else None
            if padding is not None and mask is None:
                return None, f"attention {name}'s key_padding_mask is not a 2-D graph input"
            if bias is not None:
                if id(bias) not in proofs:
                    proofs[id(bias)] = key_padding_source(model, bias)
                proven, why = proofs[id(bias)]
                if proven is None:
                    return None, f"attention {name}: {why}"
                if mask is not None and proven is not mask:
                    return None, f"attention {name} is masked by two inputs"
                mask = proven
            if mask is None:
                return None, f"attention {name} has no padding mask: every position attends to padded ones"
        masks[mask.name or ""] = mask
    if len(masks) != 1:
        return None, f"the attention layers use {len(masks)} different masks"
    mask = next(iter(masks.values()))
    if mask.name != MASK_INPUT:
        return None, (f"the padding mask is the input {mask.name!r}: per-token outputs are compared on real "
                      f"tokens only for an input named {MASK_INPUT!r}, so zeros at padded positions would "
                      "count as errors")
    return mask, ""


def _rank_at_most_one(value: ir.Value, shapes: dict[str, list]) -> bool:
    if value.const_value is not None:
        return len(value.const_value.shape) <= 1
    dims = shapes.get(value.name or "")
    if dims is None and value.shape is not None:
        dims = list(value.shape)
    return dims is not None and len(dims) <= 1


def _per_token(node: ir.Node, token: dict[str, int], shapes: dict[str, list]) -> bool:
    """Whether ``node`` computes each position from that position alone (module docstring),
    reading at least one per-token value and writing per-token values (and global reductions)."""
    key = _key(node)
    if not any(v is not None and v.name in token for v in node.inputs):
        return False
    globals_ = _GLOBAL_OUTPUTS.get(key, ())
    for index, out in enumerate(node.outputs):
        if index in globals_:
            continue
        if out.name not in token and (list(out.uses()) or out.is_graph_output()):
            return False
    if key == ("", "Reshape"):  # [B, S, D] <-> [B*S, D]: the same rows, so the identity on packed rows
        data, out = node.inputs[0], node.outputs[0]
        return data is not None and data.name in token and out.name in token and token[data.name] == token[out.name]
    if key in _ELEMENTWISE or key == ("", "DynamicQuantizeLinear"):
        others = [v for v in node.inputs if v is not None and v.name not in token]
        return all(_rank_at_most_one(v, shapes) for v in others)
    if key in _NORMS:
        axis = node.attributes.get_int("axis", -1)
        data = [v for v in node.inputs[:2 if key[1] == "SkipLayerNormalization" else 1]]
        if axis not in (-1, 2) or not all(v is not None and v.name in token for v in data):
            return False
        if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
            return False
        others = [v for v in node.inputs if v is not None and v not in data]
        return all(_rank_at_most_one(v, shapes) for v in others)
    if key in _MATMULS:
        a, b = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        if a is None or a.name not in token or b is None or b.const_value is None:
            return False
        if key[1] != "MatMulNBits" and len(b.const_value.shape) != 2:
            return False
        others = [v for v in node.inputs[2:] if v is not None]
        return all(v.name not in token and _rank_at_most_one(v, shapes) for v in others)
    return False


def _shapes(model: ir.Model) -> dict[str, list]:
    """Value name -> dims: ONNX Runtime's symbolic shape inference where it runs, else (and for
    the values it leaves out) the shapes the model carries (dims: int, symbol name or None)."""
    shapes: dict[str, list] = dict(infer_symbolic(model) or {})
    for value in [*model.graph.inputs, *(out for node in model.graph for out in node.outputs)]:
        if value.name in shapes or value.shape is None:
            continue
        shapes[value.name or ""] = [d if isinstance(d, int) else getattr(d, "value", None) for d in value.shape]
    return shapes


def _token_values(model: ir.Model, mask: ir.Value, shapes: dict[str, list]) -> tuple[dict[str, int], set[str]]:
    """Name -> width ``D`` of every main-graph value of shape ``[B, S, D]`` (the mask's axes) or
    ``[B*S, D]`` (the rows of one: a ``Reshape`` to 2-D as Keras' ``Tensordot`` writes it), and
    the names of the latter."""
    axes = shapes.get(mask.name or "", [])  # graph inputs are in ``shapes`` (see _shapes)
    if len(axes) != 2 or any(a is None for a in axes):
        return {}, set()
    monomials = [monomial(a) for a in axes]
    rows_dim = monomial_product(monomials) if all(m is not None for m in monomials) else None  # type: ignore[arg-type]
    token: dict[str, int] = {}
    rows: set[str] = set()
    for node in model.graph:
        for out in node.outputs:
            dims = shapes.get(out.name or "")
            if dims is None or not dims or not isinstance(dims[-1], int):
                continue
            if len(dims) == 3 and dims[:2] == axes:
                token[out.name or ""] = dims[2]
            elif len(dims) == 2 and rows_dim is not None and monomial(dims[0]) == rows_dim:
                token[out.name or ""] = dims[1]
                rows.add(out.name or "")
    return token, rows


def _components(region: list[ir.Node]) -> list[list[ir.Node]]:
    """Connected components of ``region`` (nodes joined by a value one writes and another reads)."""
    parent = {id(n): id(n) for n in region}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    members = {id(n) for n in region}
    for node in region:
        for out in node.outputs:
            for use in out.uses():
                if id(use.node) in members:
                    parent[find(id(use.node))] = find(id(node))
    groups: dict[int, list[ir.Node]] = {}
    for node in region:
        groups.setdefault(find(id(node)), []).append(node)
    return list(groups.values())


class _Builder:
    """Creates the index values once and the pack / unpack nodes (appended; the graph is sorted
    at the end)."""

    def __init__(self, model: ir.Model, mask: ir.Value) -> None:
        self.model, self.nodes = model, []
        flat = self._node("Reshape", [mask, self._const("skip_padding_flat", np.array([-1], np.int64))])
        self.keep = self._node("Cast", [flat], to=ir.DataType.BOOL)
        positions = self._node("NonZero", [self.keep])
        self.index = self._node("Reshape", [positions, self._const("skip_padding_minus_one", np.array([-1], np.int64))])
        count = self._node("Shape", [self.index])
        ranks = self._node("CumSum", [self._node("Cast", [self.keep], to=ir.DataType.INT64),
                                      self._const("skip_padding_axis", np.array(0, np.int64))])
        ranks = self._node("Sub", [ranks, self._const("skip_padding_one", np.array(1, np.int64))])
        self.inverse = self._node("Where", [self.keep, ranks, count])
        self.layout = self._node("Shape", [mask])
        self.packs = self.unpacks = 0

    def _const(self, name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=name, const_value=ir.tensor(array))
        self.model.graph.register_initializer(value)
        return value

    def _node(self, op: str, inputs: list[ir.Value], **attributes: object) -> ir.Value:
        node = ir.node(op, inputs, attributes=attributes, name=f"{NODE_PREFIX}{op}_{len(self.nodes)}")
        self.model.graph.append(node)
        self.nodes.append(node)
        return node.outputs[0]

    def pack(self, value: ir.Value, width: int) -> ir.Value:
        self.packs += 1
        rows = self._node("Reshape", [value, self._const(f"{value.name}_rows_shape", np.array([-1, width], np.int64))])
        packed = self._node("Gather", [rows, self.index], axis=0)
        packed.name = f"{value.name}_tokens"
        return packed

    def unpack(self, packed: ir.Value, width: int, dtype: ir.DataType, name: str, *, rows: bool = False) -> ir.Value:
        """``packed``'s rows back at their positions, 0 at padded ones: ``[B, S, width]``, or
        ``[B*S, width]`` with ``rows``."""
        self.unpacks += 1
        zero = self._const(f"{name}_padding_row", np.zeros((1, width), dtype.numpy()))
        full = self._node("Gather", [self._node("Concat", [packed, zero], axis=0), self.inverse], axis=0)
        if rows:
            return full
        shape = self._node("Concat", [self.layout, self._const(f"{name}_width", np.array([width], np.int64))], axis=0)
        return self._node("Reshape", [full, shape])


def skip_padding(model: ir.Model) -> SkippedPadding:
    """Rewrite ``model`` in place to run its per-token layers on real tokens only (module
    docstring); returns what was done, or why nothing was. The caller checks the outputs."""
    if any(node.op_type in ("If", "Loop", "Scan") for node in model.graph):
        return SkippedPadding(reason="the model has control flow")
    mask, why = attention_mask(model)
    if mask is None:
        return SkippedPadding(reason=why)
    shapes = _shapes(model)
    token, rows = _token_values(model, mask, shapes)
    region = [node for node in model.graph if _per_token(node, token, shapes)]
    region = [n for group in _components(region) if any(_key(n) in _MATMULS for n in group) for n in group]
    if not region:
        return SkippedPadding(mask=mask.name, reason="no per-token layer with a matrix product")
    members = {id(n) for n in region}
    build = _Builder(model, mask)
    packed: dict[int, ir.Value] = {}  # id(original value) -> its packed value
    for node in region:  # graph order: every packed input is made before its readers
        inputs: list[ir.Value | None] = []
        for value in node.inputs:
            if value is None or value.name not in token:
                inputs.append(value)
                continue
            if id(value) not in packed:
                packed[id(value)] = build.pack(value, token[value.name])
            inputs.append(packed[id(value)])
        attributes = dict(node.attributes)
        if _key(node) in _NORMS:
            attributes["axis"] = ir.AttrInt64("axis", -1)
        if _key(node) == ("", "Reshape"):
            new = ir.Node("", "Identity", inputs[:1], name=f"{node.name}_tokens")
        else:
            new = ir.Node(node.domain, node.op_type, inputs, attributes=attributes.values(),
                          num_outputs=len(node.outputs), name=f"{node.name}_tokens", overload=node.overload)
        model.graph.insert_before(node, new)
        globals_ = _GLOBAL_OUTPUTS.get(_key(node), ())
        for index, (old, out) in enumerate(zip(node.outputs, new.outputs)):
            out.type = old.type
            if index in globals_:
                out.shape = old.shape
                ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
                out.name, old.name = old.name, f"{old.name}_full"
                continue
            out.name = f"{old.name}_tokens"
            packed[id(old)] = out
            outside = [u for u in old.uses() if id(u.node) not in members]
            if outside or old.is_graph_output():
                full = build.unpack(out, token[old.name], old.dtype or ir.DataType.FLOAT, old.name or "value",
                                    rows=old.name in rows)
                full.type, full.shape = old.type, old.shape
                for use in outside:
                    use.node.replace_input_with(use.idx, full)
                if old.is_graph_output():
                    position = model.graph.outputs.index(old)
                    model.graph.outputs[position] = full
                    full.name, old.name = old.name, f"{old.name}_full"
    for node in reversed(region):
        model.graph.remove(node, safe=True)
    model.graph.sort()
    logger.info("skip padding: %d per-token nodes run on real tokens only (%d packs, %d unpacks)",
                len(region), build.packs, build.unpacks)
    return SkippedPadding(nodes=len(region), packs=build.packs, unpacks=build.unpacks, mask=mask.name)


def parity_problem(original: ir.Model, rewritten: ir.Model, mask: str, *, tolerance: float = 1e-4) -> str | None:
    """Why ``rewritten`` does not compute ``original``'s outputs on real tokens (None: it does,
    within ``tolerance`` of each output's range), on random probe inputs with padded rows in
    ``mask``: outputs whose first two axes are the mask's are compared at real positions only
    (their padded positions are 0 by design), the others everywhere."""
    from onnx_compress.passes.quantize.attention_pack import parity_problem as outputs_problem

    if not any(v.name == mask for v in original.graph.inputs):
        return f"the mask input {mask!r} is missing"
    return outputs_problem(original, rewritten, mask, tolerance=tolerance, real_tokens=True)
