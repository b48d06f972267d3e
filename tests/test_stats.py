"""Model statistics: parameters and MACs against hand-computed values."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

import onnx_compress as oc
from onnx_compress.stats import count_macs, count_params, op_histogram

# SimpleModel on 1x1x28x28: conv1 26*26*32*(1*9) + conv2 11*11*64*(32*9) + fc1 1600*128 + fc2 128*10
SEED_MACS = 26 * 26 * 32 * 9 + 11 * 11 * 64 * 32 * 9 + 1600 * 128 + 128 * 10
SEED_PARAMS = (32 * 9 + 32) + (64 * 32 * 9 + 64) + (1600 * 128 + 128) + (128 * 10 + 10)


def test_seed_cnn_params_macs_and_ops(torch_seed_onnx):
    stats = oc.model_stats(torch_seed_onnx)
    assert stats.params == SEED_PARAMS
    assert stats.macs == SEED_MACS and stats.macs_unknown_nodes == []
    assert stats.ops["Conv"] == 2 and stats.ops["Gemm"] == 2
    assert stats.size_bytes == torch_seed_onnx.stat().st_size
    assert oc.model_stats(torch_seed_onnx, batch=4).macs == 4 * SEED_MACS


def test_keras_seed_has_the_same_params_and_macs(keras_seed_onnx):
    stats = oc.model_stats(keras_seed_onnx)
    assert stats.params == SEED_PARAMS
    assert stats.macs == SEED_MACS


def _model(nodes, inputs, outputs, initializers) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_grouped_conv_and_batched_matmul_macs():
    w_dw = numpy_helper.from_array(np.zeros((16, 1, 3, 3), np.float32), "Wdw")  # depthwise, 16 groups
    w_mm = numpy_helper.from_array(np.zeros((16, 5), np.float32), "Wmm")
    shape = numpy_helper.from_array(np.array([2, 8, 16], np.int64), "shape")
    model = _model(
        [
            helper.make_node("Conv", ["x", "Wdw"], ["c"], group=16, pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["c", "shape"], ["r"]),  # (1,16,4,4) -> (2,8,16)
            helper.make_node("MatMul", ["r", "Wmm"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w_dw, w_mm, shape],
    )
    macs, unknown = count_macs(model)
    assert unknown == []
    assert macs == (16 * 4 * 4) * 9 + (2 * 8 * 5) * 16
    assert count_params(model) == 16 * 9 + 16 * 5  # the int64 shape tensor is not a parameter
    assert op_histogram(model) == {"Conv": 1, "MatMul": 1, "Reshape": 1}


def test_symbolic_sequence_needs_a_size():
    w = numpy_helper.from_array(np.zeros((8, 4), np.float32), "W")
    model = _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    assert count_macs(model) == (0, ["proj"])
    assert count_macs(model, dims={"sequence": 10}) == (10 * 4 * 8, [])
