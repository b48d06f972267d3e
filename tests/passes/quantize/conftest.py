"""Fixtures of the quantization tests: small ONNX models built with onnx.helper, and the seed CNN
quantized once per module.

``qm`` gives the model builders below (``qm.matmul_chain(...)``) to the tests.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, initializers, opset: int = 17) -> ir.Model:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializers)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def matmul_chain(width: int = 64, depth: int = 4, fragile: int | None = None, seed: int = 0,
                 batch: int | str = "batch") -> ir.Model:
    """x[batch, width] -> (MatMul W_i -> Relu) x depth -> y. Node names ``mm0`` ... ``mm{depth-1}``.

    With ``fragile=i`` (i >= 1), ``W_i`` gets a first row of large weights (50) that never
    matter in float, because feature 0 of its input is always zero (column 0 of ``W_{i-1}`` is
    zero): every output channel's int8 scale is then set by 50, the small weights that carry the
    signal round to zero, and quantizing ``mm{i}`` wrecks the output. Other nodes are benign.
    """
    if fragile is not None and not 1 <= fragile < depth:
        raise ValueError("fragile must be in [1, depth)")
    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32) for _ in range(depth)]
    if fragile is not None:
        weights[fragile - 1][:, 0] = 0.0
        weights[fragile] = weights[fragile] * np.float32(0.1)
        weights[fragile][0, :] = 50.0
    nodes, inits = [], []
    current = "x"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        if i < depth - 1:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
            current = f"r{i}"
    nodes.append(helper.make_node("Identity", [f"h{depth - 1}"], ["y"], name="out"))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])], inits)


def chain_inputs(count: int, width: int = 64, seed: int = 1) -> dict[str, np.ndarray]:
    """Inputs for :func:`matmul_chain`: standard normal."""
    return {"x": np.random.default_rng(seed).standard_normal((count, width)).astype(np.float32)}


def weight_only_model(k: int = 256, n: int = 512, seed: int = 0) -> ir.Model:
    """x[batch, k] -> MatMul W1[k, n] -> Relu -> Gemm(W2[n, 64], transB=0) + b -> y."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    w2 = (rng.standard_normal((n, 64)) / np.sqrt(n)).astype(np.float32)
    b2 = rng.standard_normal(64).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="gemm"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
                  [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                   numpy_helper.from_array(b2, "b2")])


def conv_only_model(seed: int = 0) -> ir.Model:
    """img[batch, 3, 16, 16] -> Conv(8, 3x3) -> Relu -> Conv(8, 3x3) -> y: no MatMul anywhere."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    nodes = [
        helper.make_node("Conv", ["img", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 12, 12])],
                  [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])


def elementwise_model() -> ir.Model:
    """y = Relu(x + 1): nothing to quantize."""
    one = numpy_helper.from_array(np.ones((1, 4), np.float32), "one")
    nodes = [helper.make_node("Add", ["x", "one"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["y"], name="relu")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [one])


@pytest.fixture(scope="session")
def qm() -> types.SimpleNamespace:
    """The model builders of this file."""
    return types.SimpleNamespace(
        matmul_chain=matmul_chain,
        chain_inputs=chain_inputs,
        weight_only_model=weight_only_model,
        conv_only_model=conv_only_model,
        elementwise_model=elementwise_model,
    )
