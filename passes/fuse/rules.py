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
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

__all__ = ["normalization_rules", "ScalarWhereBranch", "ConstantSecondInAdd"]


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


def normalization_rules() -> pattern.RewriteRuleSet:
    """The rules that bring other exporters' graphs to the forms onnxscript's fusions match."""
    return pattern.RewriteRuleSet([ScalarWhereBranch.rule(1), ScalarWhereBranch.rule(2),
                                   ConstantSecondInAdd.rule()])
