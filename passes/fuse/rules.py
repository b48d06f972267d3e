"""Our rewrite rules (onnxscript rewriter style) for patterns other exporters write, run before
onnxscript's ORT fusion rules so that those match.

``scalar_where_branch``
    ``Where(cond, c, x)`` (or ``Where(cond, x, c)``) with ``c`` a one-element constant of shape
    ``[1]`` -> the same ``Where`` with ``c`` as a scalar. Exact: broadcasting a shape-``[1]``
    tensor against operands of rank >= 1 gives the same result as broadcasting the scalar (the
    output rank is that of the other operands, which is >= 1 here; checked). The TorchScript
    exporter writes the ``nan -> 0`` guard after the attention Softmax as
    ``Where(IsNaN(p), [0.0], p)``; onnxscript's SDPA rule expects the scalar.

``constant_second_in_add``
    ``Add(c, x)`` with ``c`` a constant and ``x`` computed -> ``Add(x, c)``. Exact: addition
    commutes and broadcasting is symmetric. The TorchScript exporter writes every ``Linear`` bias
    as ``Add(bias, MatMul(x, W))``; onnxscript's bias rules (``MultiHeadAttention`` Q/K/V biases)
    match ``Add(MatMul(x, W), bias)`` only.

``layer_norm_moments`` (tf2onnx's Keras ``LayerNormalization``)
    ``m = GlobalAveragePool(x)``, ``v = GlobalAveragePool((x - m)^2)``, ``s = g / sqrt(v [+ eps])``,
    ``y = x s + (beta - m s)`` -> ``LayerNormalization(x, g, beta, axis=-1, epsilon=eps)``
    (``eps`` = 0 when the graph adds none). Exact: ``x s + beta - m s = (x - m) g / sqrt(v + eps)
    + beta``, and on a rank-3 ``[batch, sequence, hidden]`` input ``GlobalAveragePool`` averages
    over the last axis only (its pooled axes are those after the second), which is the
    LayerNorm's axis; other ranks are refused. ``g`` and ``beta`` must be constants with one
    value per hidden unit (shape ``[hidden]`` or ``[1, 1, hidden]``).

``erf_gelu_scaled`` (tf2onnx's erf-GELU)
    ``(0.5 x) (1 + erf(x c))`` with ``c = 1/sqrt(2)`` -> ``Gelu(x)`` (ONNX Runtime's contrib op,
    ``0.5 x (1 + erf(x / sqrt(2)))``); the same maths written with a multiplication by
    ``1/sqrt(2)`` and the factor ``0.5`` on ``x`` first, which onnxscript's GELU rules (division
    by ``sqrt(2)``, ``0.5`` last) do not match. Constants are checked to 1e-6 relative.

``einsum_attention`` (tf2onnx's Keras ``MultiHeadAttention``)
    Keras computes attention with two einsums; tf2onnx writes each as Unsqueeze / Transpose /
    Reshape to 3-D, a batched MatMul over ``B*H``, and Reshape / Squeeze back:
    ``q, k, v: [B, S, H, Dh]`` (Reshape of the projections ``[B, S, D]``),
    ``scores[b,h,s,t] = sum_d q[b,s,h,d] k[b,t,h,d]`` (``Unsqueeze(q, 3)`` transposed to
    ``[B, H, S, 1, Dh]`` and ``Unsqueeze(k, 1)`` to ``[B, H, 1, T, Dh]``, both flattened to
    ``B*H`` batches), times ``c``, masked as ``m * scores + (1 - m) * N`` with ``m`` the boolean
    padding mask broadcast from ``[B, 1, 1, T]`` and ``N`` a huge negative constant, Softmax over
    ``t``, then ``o[b,s,h,d] = sum_t p[b,h,s,t] v[b,t,h,d]`` and the heads merged back to
    ``[B, S, D]``. That is ONNX Runtime's ``MultiHeadAttention(q, k, v, attention_bias=bias,
    num_heads=H, scale=c)`` with ``bias = Where(m, 0, N)`` expanded to ``[B, 1, S, T]``: the masked
    scores differ only where ``m`` is false, by ``scores + N`` instead of ``N``, and both are
    ``N``-dominated, so Softmax gives 0 there either way (up to float rounding when a whole row is
    masked, i.e. an input without any real token). Checked: every Unsqueeze/Squeeze axis and
    Transpose permutation above, the shapes around each Reshape (the 5-D <-> 3-D reshapes only
    merge or split ``B*H``), Softmax over the last axis, ``c`` and ``N`` scalar constants.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

__all__ = ["normalization_rules", "keras_rules", "attention_rules", "ScalarWhereBranch", "ConstantSecondInAdd", "LayerNormMoments",
           "ErfGeluScaled", "EinsumAttention"]


def _one_element(value: ir.Value | None) -> np.ndarray | None:
    tensor = value.const_value if value is not None else None
    if tensor is None or tuple(tensor.shape) != (1,):
        return None
    return tensor.numpy().reshape(())


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


class ScalarWhereBranch(pattern.RewriteRuleClassBase):
    """``Where(cond, [c], x)`` -> ``Where(cond, c, x)`` (and the mirrored form); see the module docstring."""

    def __init__(self, branch: int) -> None:
        super().__init__(f"ScalarWhereBranch{branch}")
        self._branch = branch

    def pattern(self, op, cond, a, b):
        return op.Where(cond, a, b)

    def check(self, context, cond, a, b, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        constant, other = (a, b) if self._branch == 1 else (b, a)
        if _one_element(constant) is None:
            return result.fail("branch is not a one-element constant of shape [1]", constant)
        ranks = [_rank(cond), _rank(other)]
        if any(r is None for r in ranks) or max(ranks) < 1:  # type: ignore[type-var]
            return result.fail("the other operands' rank is unknown or 0 (the [1] shape would matter)")
        return result

    def rewrite(self, op, cond, a, b, **_):
        constant = a if self._branch == 1 else b
        scalar = op.Constant(value=ir.tensor(_one_element(constant)))
        return op.Where(cond, scalar, b) if self._branch == 1 else op.Where(cond, a, scalar)


class ConstantSecondInAdd(pattern.RewriteRuleClassBase):
    """``Add(c, x)`` -> ``Add(x, c)`` for a constant ``c`` and a computed ``x``; see the module docstring."""

    def pattern(self, op, c, x):
        return op.Add(c, x)

    def check(self, context, c, x, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if c is None or c.const_value is None:
            return result.fail("the first operand is not a constant", c)
        if x is None or x.const_value is not None:
            return result.fail("the second operand is a constant too", x)
        return result

    def rewrite(self, op, c, x, **_):
        return op.Add(x, c)


def _scalar(value: ir.Value | None) -> float | None:
    tensor = value.const_value if value is not None else None
    if tensor is None or tensor.size != 1:
        return None
    return float(tensor.numpy().reshape(()))


def _close(value: ir.Value | None, expected: float) -> bool:
    got = _scalar(value)
    return got is not None and abs(got - expected) <= 1e-6 * abs(expected)


def _per_hidden(value: ir.Value | None, hidden: int) -> np.ndarray | None:
    """A constant holding one value per hidden unit ([hidden] or [1, ..., 1, hidden]), as [hidden]."""
    tensor = value.const_value if value is not None else None
    if tensor is None or tensor.size != hidden or (len(tensor.shape) and tensor.shape[-1] != hidden):
        return None
    return tensor.numpy().reshape(hidden).astype(np.float32)


class LayerNormMoments(pattern.RewriteRuleClassBase):
    """tf2onnx's LayerNorm (GlobalAveragePool moments) -> ``LayerNormalization``; see the module docstring."""

    def __init__(self, with_epsilon: bool) -> None:
        super().__init__(f"LayerNormMoments{'Eps' if with_epsilon else ''}")
        self._with_epsilon = with_epsilon

    def pattern(self, op, x, gamma, beta, epsilon):
        mean = op.GlobalAveragePool(x)
        centered = op.Sub(x, mean)
        variance = op.GlobalAveragePool(op.Mul(centered, centered))
        if self._with_epsilon:
            variance = op.Add(variance, epsilon)
        scale = op.Mul(op.Reciprocal(op.Sqrt(variance)), gamma)
        return op.Add(op.Mul(x, scale), op.Add(op.Mul(op.Neg(mean), scale), beta))

    def check(self, context, x, gamma, beta, epsilon=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.shape is None or len(x.shape) != 3 or not isinstance(x.shape[2], int):
            return result.fail("input is not rank 3 with a known last axis (GlobalAveragePool would pool more)", x)
        hidden = x.shape[2]
        if _per_hidden(gamma, hidden) is None or _per_hidden(beta, hidden) is None:
            return result.fail("scale or shift is not a constant with one value per hidden unit")
        if self._with_epsilon and (_scalar(epsilon) is None or _scalar(epsilon) < 0):  # type: ignore[operator]
            return result.fail("epsilon is not a non-negative scalar constant", epsilon)
        return result

    def rewrite(self, op, x, gamma, beta, epsilon=None, **_):
        hidden = x.shape[2]
        eps = _scalar(epsilon) if self._with_epsilon else 0.0
        return op.LayerNormalization(x, op.Constant(value=ir.tensor(_per_hidden(gamma, hidden))),
                                     op.Constant(value=ir.tensor(_per_hidden(beta, hidden))),
                                     axis=-1, epsilon=float(eps or 0.0))


class ErfGeluScaled(pattern.RewriteRuleClassBase):
    """``(0.5 x)(1 + erf(x / sqrt 2))`` written with ``x * (1/sqrt 2)`` -> ``Gelu``; see the module docstring."""

    def pattern(self, op, x, inv_sqrt2, one, half):
        return op.Mul(op.Mul(x, half), op.Add(op.Erf(op.Mul(x, inv_sqrt2)), one))

    def check(self, context, x, inv_sqrt2, one, half, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not (_close(inv_sqrt2, 1.0 / np.sqrt(2.0)) and _close(one, 1.0) and _close(half, 0.5)):
            return result.fail("constants are not 1/sqrt(2), 1 and 0.5")
        return result

    def rewrite(self, op, x, **_):
        return op.Gelu(x, _domain="com.microsoft")


def _ints(value: ir.Value | None) -> list[int] | None:
    tensor = value.const_value if value is not None else None
    return None if tensor is None else [int(v) for v in tensor.numpy().reshape(-1)]


def _dims(value: ir.Value | None) -> list | None:
    return None if value is None or value.shape is None else list(value.shape)


class EinsumAttention(pattern.RewriteRuleClassBase):
    """tf2onnx's Keras MultiHeadAttention (einsums as batched MatMuls) -> ``MultiHeadAttention``;
    see the module docstring."""

    def pattern(self, op, q_proj, k_proj, v_proj, q_axes, k_axes, v_axes, p_axes, s_axes, o_axes, scale,
                mask, true_value, big):
        q = op.Reshape(q_proj, pattern.ANY_VALUE, _outputs=["q4"])
        q3 = op.Reshape(op.Transpose(op.Unsqueeze(q, q_axes), perm=[0, 2, 1, 3, 4]), pattern.ANY_VALUE,
                        _outputs=["q3"])
        k = op.Reshape(k_proj, pattern.ANY_VALUE, _outputs=["k4"])
        k3 = op.Reshape(op.Transpose(op.Unsqueeze(k, k_axes), perm=[0, 3, 1, 2, 4]), pattern.ANY_VALUE)
        scores3 = op.MatMul(q3, op.Transpose(k3, perm=[0, 2, 1]))
        scores = op.Squeeze(op.Reshape(scores3, pattern.ANY_VALUE, _outputs=["scores5"]), s_axes)
        scaled = op.Mul(scores, scale)
        # Keras' ones_like(scores): True broadcast to the scores' shape (through Casts of the shape)
        score_shape = op.Shape(scaled)
        score_shape = pattern.OrValue([op.Cast(op.Cast(score_shape)), op.Cast(score_shape), score_shape])
        keep = op.And(op.Expand(true_value, score_shape), mask)
        masked = op.Add(op.Mul(op.Cast(keep, to=ir.DataType.FLOAT), scaled),
                        op.Mul(big, op.Cast(op.Not(keep), to=ir.DataType.FLOAT)))
        probs = op.Softmax(masked, _outputs=["probs"])
        p3 = op.Reshape(op.Unsqueeze(probs, p_axes), pattern.ANY_VALUE)
        v = op.Reshape(v_proj, pattern.ANY_VALUE, _outputs=["v4"])
        v3 = op.Reshape(op.Transpose(op.Unsqueeze(v, v_axes), perm=[0, 3, 2, 4, 1]), pattern.ANY_VALUE)
        out3 = op.MatMul(p3, op.Transpose(v3, perm=[0, 2, 1]))
        out = op.Squeeze(op.Reshape(out3, pattern.ANY_VALUE, _outputs=["out5"]), o_axes)
        return op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), pattern.ANY_VALUE, _outputs=["merged"])

    def check(self, context, q_proj, k_proj, v_proj, q_axes, k_axes, v_axes, p_axes, s_axes, o_axes, scale,
              mask, true_value, big, q4, k4, v4, q3, scores5, out5, probs, merged, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        axes = [_ints(a) for a in (q_axes, k_axes, v_axes, p_axes, s_axes, o_axes)]
        if axes != [[3], [1], [2], [3], [4], [4]]:
            return result.fail(f"Unsqueeze/Squeeze axes {axes} are not those of the einsum decomposition")
        shapes = {name: _dims(value) for name, value in (("q_proj", q_proj), ("k_proj", k_proj),
                                                          ("v_proj", v_proj), ("q4", q4), ("k4", k4), ("v4", v4),
                                                          ("q3", q3), ("scores5", scores5), ("out5", out5),
                                                          ("merged", merged), ("mask", mask))}
        if any(dims is None for dims in shapes.values()):
            return result.fail(f"unknown shapes: {[n for n, d in shapes.items() if d is None]}")
        batch, seq, hidden = shapes["q_proj"]
        if not isinstance(hidden, int) or shapes["k_proj"] != shapes["q_proj"] or shapes["v_proj"] != shapes["q_proj"]:
            return result.fail("query, key and value projections are not all [B, S, D] alike (self-attention)")
        if shapes["q4"] != shapes["k4"] or shapes["q4"] != shapes["v4"] or shapes["q4"][:2] != [batch, seq]:
            return result.fail("the head splits are not [B, S, H, Dh] alike")
        heads, head_size = shapes["q4"][2:]
        if not isinstance(heads, int) or not isinstance(head_size, int) or heads * head_size != hidden:
            return result.fail("the head split does not divide the hidden size")
        if shapes["q3"][1:] != [seq, head_size]:
            return result.fail("the query's 3-D reshape is not [B*H, S, Dh]")
        if shapes["scores5"] != [batch, heads, seq, seq, 1] or shapes["out5"] != [batch, heads, seq, head_size, 1]:
            return result.fail("the 5-D reshapes do not split B*H back into [B, H, ...]")
        if shapes["merged"] != [batch, seq, hidden]:
            return result.fail("the heads are not merged back to [B, S, D]")
        dims = shapes["mask"]
        # dim 0 is B or 1: the graph broadcasts the mask against the [B, H, S, T] scores
        if len(dims) != 4 or dims[1] != 1 or dims[2] != 1 or dims[3] != seq:
            return result.fail(f"the padding mask is not [B, 1, 1, T]: {dims}")
        softmax = probs.producer()
        axis = softmax.attributes.get("axis")
        if (axis.as_int() if axis is not None else -1) not in (-1, 3):
            return result.fail("Softmax is not over the last axis")
        true_tensor = true_value.const_value
        if true_tensor is None or true_tensor.size != 1 or not bool(true_tensor.numpy().reshape(())):
            return result.fail("the mask's broadcast value is not the constant True")
        if _scalar(scale) is None or _scalar(big) is None or _scalar(big) > -1e4:  # type: ignore[operator]
            return result.fail("the scale or the masking constant is not a scalar (mask value must be <= -1e4)")
        return result

    def rewrite(self, op, q_proj, k_proj, v_proj, q4, mask, scale, big, **_):
        zero = op.Constant(value=ir.tensor(np.array(0.0, dtype=np.float32)))
        bias = op.Where(mask, zero, op.Constant(value=ir.tensor(np.array(_scalar(big), dtype=np.float32))))
        one = op.Constant(value_ints=[1])
        seq = op.Shape(q_proj, start=1, end=2)
        bias = op.Expand(bias, op.Concat(one, one, seq, one, axis=0))
        return op.MultiHeadAttention(q_proj, k_proj, v_proj, None, None, bias, num_heads=int(q4.shape[2]),
                                     scale=float(_scalar(scale)), _domain="com.microsoft")


def normalization_rules() -> pattern.RewriteRuleSet:
    """The rules that bring other exporters' graphs to the forms onnxscript's fusions match."""
    return pattern.RewriteRuleSet([ScalarWhereBranch.rule(1), ScalarWhereBranch.rule(2),
                                   ConstantSecondInAdd.rule()])


def keras_rules() -> pattern.RewriteRuleSet:
    """tf2onnx's forms of LayerNorm and erf-GELU (commuted operand orders included)."""
    return pattern.RewriteRuleSet([LayerNormMoments.rule(True), LayerNormMoments.rule(False),
                                   ErfGeluScaled.rule()], commute=True)


def attention_rules() -> pattern.RewriteRuleSet:
    """Attention as tf2onnx writes Keras' MultiHeadAttention (operand orders as tf2onnx writes them)."""
    return pattern.RewriteRuleSet([EinsumAttention.rule()])
