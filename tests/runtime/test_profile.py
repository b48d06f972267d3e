"""Per-operator profile of a real ONNX Runtime session: which kernels ran, how often, their shares."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_compress.errors import SettingError
from onnx_compress.runtime import SessionSettings
from onnx_compress.runtime.profile import GEMM_OPS, profile_ops


def _two_layer_mlp() -> bytes:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((256, 512)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((512, 64)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_profile_counts_the_kernels_of_the_timed_calls_only():
    feeds = {"x": np.ones((32, 256), np.float32)}
    # basic optimization: ONNX Runtime keeps MatMul and Relu as separate kernels
    profile = profile_ops(_two_layer_mlp(), feeds, settings=SessionSettings(provider="cpu", intra_op_threads=1,
                                                                           optimization="basic"),
                          runs=7, warmup=4)
    by_type = {op.op_type: op for op in profile.ops}
    assert set(by_type) == {"MatMul", "Relu"}
    assert by_type["MatMul"].nodes == 2 and by_type["Relu"].nodes == 1  # per call: warm-up calls left out
    assert profile.runs == 7 and profile.batch == 32
    assert sum(op.share for op in profile.ops) == pytest.approx(1.0)
    assert profile.gemm_share == pytest.approx(by_type["MatMul"].share) and "MatMul" in GEMM_OPS
    assert profile.gemm_share > 0.5  # 8.4 M multiply-adds against 16 k Relu elements
    assert profile.total_ms == pytest.approx(sum(op.ms for op in profile.ops))
    assert profile.ops[0].op_type == "MatMul"  # largest first
    assert profile.as_dict()["ops"][0]["op_type"] == "MatMul"


def test_profile_refuses_bad_counts():
    with pytest.raises(SettingError, match="runs >= 1"):
        profile_ops(_two_layer_mlp(), {"x": np.ones((1, 256), np.float32)}, runs=0)
