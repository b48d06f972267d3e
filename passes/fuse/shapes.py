"""Symbolic shapes for the fusions: run-time Reshape targets made constant, exact shapes on every value.

Why
    The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, what Hugging Face's
    exporters and most tutorials produce) writes every head split of a BERT layer as
    ``Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [-1], [32]))``
    and the head merge likewise: the target shape is computed at run time from the batch and
    sequence sizes. ONNX's own shape inference cannot see through that, so the head count comes
    out unknown (``[unk__7, unk__8, unk__18, 32]``) and every symbolic dimension gets a fresh
    name: onnxscript's attention rules, which bind ``B, S, H, Dh`` across query, key, value and
    mask, refuse the match. all-MiniLM-L6-v2 exported that way fused GELU and the residual norms
    but none of its six attention blocks.

What
    ONNX Runtime's symbolic shape inference (``onnxruntime.tools.symbolic_shape_infer``) evaluates
    shape arithmetic symbolically (``Shape``/``Gather``/``Concat``/``Slice`` on dims named after
    the graph inputs' axes) and gives every value a shape such as ``[batch, sequence, 12, 32]``.
    From it:

    - :func:`resolve_reshapes`: a ``Reshape`` whose target is computed gets a constant target
      that means the same thing for every input size. Per output axis ``i`` with inferred dim
      ``d_i`` and data-input dim ``e_i``: ``d_i`` a number -> ``d_i``; ``d_i == e_i`` (the same
      symbol) -> ``0`` (ONNX: copy input dim ``i``; needs ``allowzero=0``); otherwise ``-1``
      (at most one such axis, else the Reshape is left alone). The element counts agree by
      construction: ``prod(d) = prod(e)`` for every binding of the symbols, so ``-1`` resolves
      to the one remaining symbolic factor. A Reshape whose target equals its input shape
      (all ``0`` or equal numbers, same rank) is an identity and is removed.
    Where ONNX Runtime's inference gives up (tf2onnx computes ``B*H`` with ``ReduceProd`` over a
    ``Shape`` slice, which it does not evaluate), :func:`resolve_reshapes` evaluates the target
    itself: every dim is a product ``c * s1 * s2 ...`` of an integer and named symbols, and
    ``Shape`` (with ``start``/``end``), ``Gather``, ``Slice``, ``Unsqueeze``, ``Squeeze``,
    ``Concat``, ``Cast``, ``ReduceProd`` and integer constants are evaluated on such lists; the
    Reshape's ``0`` and ``-1`` are then resolved by the ONNX rules (copy; total divided by the
    rest), and the result is written as above.
    - :func:`symbolic_shapes`: the inferred shapes are written onto the IR values whose shape is
      unknown or holds ONNX's anonymous ``unk__N`` dims, so that the fusion rules see one name
      per axis (``batch``, ``sequence``) everywhere.

Limits
    Needs a model ONNX Runtime's symbolic inference can run (standard ONNX ops; contrib ops it
    knows); when it fails the model is left as it is and the reason is logged. Only main-graph
    ``Reshape`` nodes are rewritten. The rewritten target is exact for every input size the
    exported graph accepted (the symbolic dims are the graph inputs' axes); a model whose
    computed target depends on input *values* (not sizes) keeps its computed target, because
    symbolic inference leaves such dims unnamed.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx_ir as ir

__all__ = ["infer_symbolic", "symbolic_shapes", "resolve_reshapes", "Monomial", "monomial", "monomial_product"]

logger = logging.getLogger(__name__)

_ANONYMOUS = re.compile(r"^unk__\d+$")
Dims = list[int | str | None]


def infer_symbolic(model: ir.Model) -> dict[str, Dims] | None:
    """Value name -> dims (int, symbol name, or None) by ONNX Runtime's symbolic shape inference;
    None when it cannot run on this model (the reason is logged)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    proto = ir.serde.serialize_model(model)
    # SymbolicShapeInference.infer_shapes' own loop, so that a node it cannot infer (the dynamo export's
    # sentence pooling: Clip without max after ReduceL2 with an axes input) does not lose the shapes
    # of every node before it (the encoder's: what the fusions need); infer_shapes would also write
    # sym_shape_infer_temp.onnx into the working directory when inference is incomplete.
    engine = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    try:
        engine._preprocess(proto)
        while engine.run_:
            engine._infer_impl()
    except Exception as exc:  # its failures are any exception type: keep what was inferred before it
        known = len(getattr(engine, "known_vi_", {}))
        logger.info("symbolic shape inference stopped (%s: %s); using the %d shapes inferred before it",
                    type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "", known)
        if not known:
            return None
    infos = list(getattr(engine, "known_vi_", {}).values())
    shapes: dict[str, Dims] = {}
    for info in infos:
        kind = info.type.WhichOneof("value")
        if kind != "tensor_type" or not info.type.tensor_type.HasField("shape"):
            continue
        dims: Dims = []
        for dim in info.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param and not _ANONYMOUS.match(dim.dim_param):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        shapes[info.name] = dims
    return shapes


def _needs_shape(value: ir.Value) -> bool:
    shape = value.shape
    if shape is None:
        return True
    for dim in shape:
        if isinstance(dim, int):
            continue
        name = getattr(dim, "value", None)
        if name is None or _ANONYMOUS.match(str(name)):
            return True
    return False


def symbolic_shapes(model: ir.Model, shapes: dict[str, Dims]) -> int:
    """Write inferred shapes onto main-graph values whose shape is unknown or anonymous; returns
    how many values got one. Only fully named shapes (no unknown dim) are written."""
    written = 0
    for node in model.graph:
        for value in node.outputs:
            dims = shapes.get(value.name or "")
            if dims is None or any(d is None for d in dims) or not _needs_shape(value):
                continue
            if value.shape is not None and len(value.shape) != len(dims):
                continue
            value.shape = ir.Shape(dims)  # type: ignore[arg-type]
            written += 1
    return written


Monomial = tuple[int, tuple[str, ...]]  # c * s1 * s2 * ...


def monomial(dim: int | str | None) -> Monomial | None:
    """A dim as ``(c, (s1, s2, ...))`` = ``c * s1 * s2 ...`` (names sorted), so equal products compare
    equal: ``"batch*sequence"`` and ``"sequence*batch"`` give ``(1, ("batch", "sequence"))``, ``64`` gives
    ``(64, ())``. An expression other than a product (``"sequence+1"``) is one opaque symbol; None stays None."""
    if dim is None:
        return None
    if isinstance(dim, int):
        return (dim, ())
    coef, names = 1, []
    for part in dim.replace(" ", "").split("*"):
        if part.isdigit():
            coef *= int(part)
        elif part.isidentifier():
            names.append(part)
        else:
            return (1, (dim,))  # an expression we do not take apart: one opaque symbol
    return (coef, tuple(sorted(names)))


def monomial_product(items: list[Monomial]) -> Monomial:
    """The product of monomials: coefficients multiplied, symbol names concatenated and sorted."""
    coef, names = 1, []
    for c, n in items:
        coef *= c
        names += n
    return (coef, tuple(sorted(names)))


def _as_dim(m: Monomial) -> int | str:
    if not m[1]:
        return m[0]
    return "*".join(([str(m[0])] if m[0] != 1 else []) + list(m[1]))


def _evaluate_shapes(model: ir.Model, shapes: dict[str, Dims]) -> dict[str, list[Monomial]]:
    """Integer tensors computed from shapes, as lists of monomials (see the module docstring);
    scalars are stored as one-element lists."""
    known: dict[str, list[Monomial]] = {}

    def get(value: ir.Value | None) -> list[Monomial] | None:
        if value is None:
            return None
        if value.name in known:
            return known[value.name]
        tensor = value.const_value
        if tensor is not None and tensor.dtype in (ir.DataType.INT64, ir.DataType.INT32) and tensor.size <= 16:
            return [(int(v), ()) for v in tensor.numpy().reshape(-1)]
        return None

    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or not node.outputs:
            continue
        op, out = node.op_type, node.outputs[0]
        result: list[Monomial] | None = None
        inputs = [get(v) for v in node.inputs]
        if op == "Shape" and node.inputs[0] is not None:
            dims = shapes.get(node.inputs[0].name or "")
            if dims is None and node.inputs[0].shape is not None:
                dims = [d if isinstance(d, int) else getattr(d, "value", None) for d in node.inputs[0].shape]
            monomials = [monomial(d) for d in dims] if dims is not None else None
            if monomials is not None and all(m is not None for m in monomials):
                start = node.attributes.get("start")
                end = node.attributes.get("end")
                result = monomials[start.as_int() if start else 0: end.as_int() if end else None]  # type: ignore[assignment]
        elif op in ("Cast", "Identity", "Squeeze") and inputs and inputs[0] is not None:
            result = inputs[0]
        elif op == "Unsqueeze" and inputs and inputs[0] is not None and len(inputs[0]) == 1:
            result = inputs[0]
        elif op == "Concat" and inputs and all(i is not None for i in inputs):
            result = [m for i in inputs for m in i]  # type: ignore[union-attr]
        elif op == "ReduceProd" and len(node.inputs) == 1 and inputs[0] is not None:
            result = [monomial_product(inputs[0])]
        elif op == "Gather" and len(inputs) == 2 and inputs[0] is not None and inputs[1] is not None:
            axis = node.attributes.get("axis")
            if axis is None or axis.as_int() == 0:
                try:
                    result = [inputs[0][i[0]] for i in inputs[1] if not i[1]]
                except IndexError:
                    result = None
        elif op == "Slice" and len(inputs) >= 3 and all(i is not None for i in inputs[:3]) \
                and all(not m[1] for m in inputs[1] + inputs[2]):  # type: ignore[operator]
            steps = inputs[4] if len(inputs) > 4 else None
            if len(inputs[1]) == 1 and (steps is None or steps == [(1, ())]):  # type: ignore[arg-type]
                result = inputs[0][inputs[1][0][0]: inputs[2][0][0]]  # type: ignore[index]
        if result is not None:
            known[out.name or ""] = result
    return known


def _evaluated_output(in_dims: Dims, target: list[Monomial]) -> Dims | None:
    """The output dims of Reshape(in_dims, target) by ONNX's rules (0 copies, -1 infers)."""
    inputs = [monomial(d) for d in in_dims]
    if any(m is None for m in inputs):
        return None
    out: list[Monomial | None] = []
    for i, m in enumerate(target):
        if m == (0, ()):
            if i >= len(inputs):
                return None
            out.append(inputs[i])
        elif m == (-1, ()):
            out.append(None)
        else:
            out.append(m)
    if out.count(None) > 1:
        return None
    if None in out:
        total = monomial_product(inputs)  # type: ignore[arg-type]
        rest = monomial_product([m for m in out if m is not None])
        names = list(total[1])
        for name in rest[1]:
            if name not in names:
                return None
            names.remove(name)
        if rest[0] == 0 or total[0] % rest[0]:
            return None
        out[out.index(None)] = (total[0] // rest[0], tuple(names))
    return [_as_dim(m) for m in out]  # type: ignore[arg-type]


def _constant_target(in_dims: Dims, out_dims: Dims) -> list[int] | None:
    """The constant Reshape target meaning ``in_dims -> out_dims`` for every size (module docstring)."""
    if any(d is None for d in out_dims) or any(d is None for d in in_dims):
        return None
    target: list[int] = []
    for i, dim in enumerate(out_dims):
        if isinstance(dim, int):
            target.append(dim)
        elif i < len(in_dims) and in_dims[i] == dim:
            target.append(0)
        else:
            target.append(-1)
    if target.count(-1) > 1 or 0 in [d for d in out_dims if isinstance(d, int)]:
        return None  # two unknown axes, or an empty axis (0 would mean "copy"): leave it alone
    return target


def _is_identity(in_dims: Dims, target: list[int]) -> bool:
    if len(in_dims) != len(target):
        return False
    return all(t == 0 or (isinstance(e, int) and e == t) for e, t in zip(in_dims, target))


def resolve_reshapes(model: ir.Model, shapes: dict[str, Dims]) -> tuple[int, int]:
    """Constant targets for run-time Reshape targets, identities removed (module docstring);
    returns (rewritten, removed). In place."""
    rewritten = removed = 0
    evaluated = _evaluate_shapes(model, shapes)
    for node in list(model.graph):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        data, target_value = node.inputs
        if data is None or target_value is None or target_value.const_value is not None:
            continue
        allowzero = node.attributes.get("allowzero")
        if allowzero is not None and allowzero.as_int() != 0:
            continue
        in_dims = shapes.get(data.name or "")
        out_dims = shapes.get(node.outputs[0].name or "")
        if in_dims is None:
            continue
        target = _constant_target(in_dims, out_dims) if out_dims is not None else None
        if target is None and (target_value.name or "") in evaluated:
            out_dims = _evaluated_output(in_dims, evaluated[target_value.name or ""])
            target = _constant_target(in_dims, out_dims) if out_dims is not None else None
        if target is None:
            continue
        output = node.outputs[0]
        if _is_identity(in_dims, target) and not output.is_graph_output():
            output.replace_all_uses_with(data)
            model.graph.remove(node, safe=True)
            removed += 1
            continue
        name = f"{node.name or 'reshape'}_target"
        constant = ir.Value(name=name, const_value=ir.tensor(np.array(target, dtype=np.int64), name=name))
        model.graph.register_initializer(constant)
        node.replace_input_with(1, constant)
        rewritten += 1
    return rewritten, removed
