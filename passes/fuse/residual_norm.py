"""Residual Add + LayerNorm: ONNX Runtime's ``SkipLayerNormalization`` kernel, or ``Sum`` +
``LayerNormalization``, whichever is faster on this CPU.

Why
    ONNX Runtime's session optimizer fuses every ``Add`` feeding a ``LayerNormalization`` into its
    contrib ``SkipLayerNormalization`` kernel. On this project's CPU (AMD EPYC, AVX-512, ONNX
    Runtime 1.32, 2 threads) that kernel is 3.3x SLOWER than what it replaces: 512 rows of 384,
    fused 0.61 ms, ``Add`` + ``LayerNormalization`` 0.19 ms; in all-MiniLM-L6-v2 int8 at batch 8
    its twelve calls took 18 % of the model's time. The optimizer only matches ``Add``: the same
    sum written as ``Sum`` (an ONNX op with the same maths for two inputs) is left alone, and the
    unfused pair runs.

What
    :func:`measure` times both forms on a (rows, width) input with this machine's ONNX Runtime,
    side by side; :func:`unfuse_residual_adds` rewrites every two-activation ``Add`` whose only
    reader is a ``LayerNormalization`` into ``Sum``.

Limits
    The choice is made for the CPU the pass runs on (like ``reduce_range``); a model deployed on
    another CPU keeps it. CUDA has its own fused kernel, unaffected by this rewrite (``Sum`` +
    ``LayerNormalization`` also run there).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnx_compress.runtime.benchmark import compare
from onnx_compress.runtime.session import SessionSettings

__all__ = ["NormTiming", "measure", "unfuse_residual_adds"]


@dataclasses.dataclass(frozen=True)
class NormTiming:
    """Medians (ms) of the fused kernel and of Sum + LayerNormalization on ``rows`` x ``width``."""

    rows: int
    width: int
    fused_ms: float
    unfused_ms: float

    @property
    def unfused_is_faster(self) -> bool:
        return self.unfused_ms < self.fused_ms


def _pair_model(add_op: str, rows: int, width: int) -> ir.Model:
    """x, skip -> ``add_op`` -> LayerNormalization -> y; ONNX Runtime fuses it when add_op is Add."""
    gamma = numpy_helper.from_array(np.ones(width, np.float32), "gamma")
    beta = numpy_helper.from_array(np.zeros(width, np.float32), "beta")
    shape = [1, rows, width]
    graph = helper.make_graph(
        [helper.make_node(add_op, ["x", "skip"], ["sum"], name="residual"),
         helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12, name="norm")],
        f"residual_{add_op}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("skip", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [gamma, beta],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def measure(width: int, *, rows: int = 512, threads: int | None = None, runs: int = 60) -> NormTiming:
    """Time ONNX Runtime's fused skip-LayerNorm against Sum + LayerNormalization, side by side."""
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal((1, rows, width)).astype(np.float32) for name in ("x", "skip")}
    settings = SessionSettings(provider="cpu", intra_op_threads=threads)
    result = compare(_pair_model("Add", rows, width), _pair_model("Sum", rows, width), feeds, runs=runs,
                     warmup=5, settings=settings)
    return NormTiming(rows, width, result.a.median_ms, result.b.median_ms)


def residual_adds(model: ir.Model) -> list[ir.Node]:
    """``Add`` nodes of two computed inputs whose only reader is a LayerNormalization's input 0."""
    found = []
    for node in model.graph:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        if any(value is None or value.const_value is not None for value in node.inputs):
            continue
        users = list(node.outputs[0].uses())
        if node.outputs[0].is_graph_output() or len(users) != 1:
            continue
        user, index = users[0]
        if user.op_type == "LayerNormalization" and user.domain in ("", "ai.onnx") and index == 0:
            found.append(node)
    return found


def unfuse_residual_adds(model: ir.Model) -> int:
    """Rewrite :func:`residual_adds` as ``Sum`` in place; returns how many."""
    adds = residual_adds(model)
    for add in adds:
        total = ir.node("Sum", list(add.inputs), name=f"{add.name or 'residual'}_sum",
                        outputs=[ir.Value(name=add.outputs[0].name + "_sum", type=add.outputs[0].type,
                                          shape=add.outputs[0].shape)])
        model.graph.insert_before(add, total)
        add.outputs[0].replace_all_uses_with(total.outputs[0])
        model.graph.remove(add, safe=True)
    return len(adds)
