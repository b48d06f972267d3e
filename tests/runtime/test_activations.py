"""Intermediate activations streamed from ONNX Runtime, batch by batch, without touching the model."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_compress.data import Dataset
from onnx_compress.errors import DataError
from onnx_compress.runtime import iter_activations


def _model(w: np.ndarray) -> ir.Model:
    fi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("ReduceSum", ["r"], ["y"], keepdims=0)],
        "g", [fi("x", TensorProto.FLOAT, ["batch", 5])], [fi("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(w, "w")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_values_are_streamed_per_batch_and_the_model_is_untouched():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    x = rng.standard_normal((10, 5)).astype(np.float32)
    model = _model(w)
    batches = list(iter_activations(model, ["h", "r", "x", "y", "h"], Dataset({"x": x}), batch_size=4))
    assert [b["h"].shape for b in batches] == [(4, 3), (4, 3), (2, 3)]
    assert all(list(b) == ["h", "r", "x", "y"] for b in batches)
    h = np.concatenate([b["h"] for b in batches])
    np.testing.assert_allclose(h, x @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([b["r"] for b in batches]), np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)  # graph input: from the feeds
    assert [v.name for v in model.graph.outputs] == ["y"]


def test_unknown_values_and_unfit_data_are_refused():
    model = _model(np.ones((5, 3), np.float32))
    with pytest.raises(KeyError, match="nothing"):
        next(iter_activations(model, ["nothing"], Dataset({"x": np.ones((2, 5), np.float32)})))
    with pytest.raises(DataError, match="calibration data"):
        next(iter_activations(model, ["h"], Dataset({"x": np.ones((2, 4), np.float32)})))
