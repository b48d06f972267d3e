"""The bridge: an ONNX graph as a trainable torch module, exact against ONNX Runtime, written back
into the same graph by initializer name."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper

from onnx_compress.data import load_data
from onnx_compress.errors import UnsupportedModelError
from onnx_compress.model_io import load_model
from onnx_compress.runtime.session import Runner
from onnx_compress.training.bridge import GraphModule, check_parity, trainable_initializers


def _max_error(model: ir.Model, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max |torch - ORT|, max |ORT|) over all outputs."""
    module = GraphModule(model)
    runner = Runner(model)
    expected = dict(zip(runner.output_names, runner.run(feeds)))
    with torch.no_grad():
        got = module(**feeds)
    errors = [float(np.abs(expected[n] - got[n].numpy()).max()) for n in expected]
    scales = [float(np.abs(expected[n]).max()) for n in expected]
    return max(errors), max(scales)


@pytest.mark.parametrize("fixture, layout", [("torch_seed_onnx", "NCHW"), ("keras_seed_onnx", "NHWC")])
def test_bridge_reproduces_the_seed_cnns(request, fixture, layout):
    model = load_model(request.getfixturevalue(fixture))
    data = request.getfixturevalue("digits_nchw" if layout == "NCHW" else "digits_nhwc").test.take(16)
    error, scale = _max_error(model, {"input": data.inputs["input"]})
    assert error <= 1e-5 * max(1.0, scale), (error, scale)
    names = trainable_initializers(model)
    convs_and_dense = [n for n in model.graph if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(names) >= len(convs_and_dense)  # every layer's weight at least


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["minilm_onnx", "minilm_ts_onnx"])
def test_bridge_reproduces_minilm(request, fixture, minilm_texts):
    model = load_model(request.getfixturevalue(fixture))
    feeds = dict(minilm_texts["val"].take(8).inputs)
    error, scale = _max_error(model, feeds)
    assert error <= 1e-5 * max(1.0, scale), (error, scale)
    module = GraphModule(model)
    assert module.parameter_count > 7_000_000  # the encoder's weights; the embedding tables stay fixed


def test_write_back_keeps_the_graph_and_matches_onnx_runtime(torch_seed_onnx, digits_nchw):
    model = load_model(torch_seed_onnx)
    before = {name: np.array(v.const_value.numpy()) for name, v in model.graph.initializers.items()}
    module = GraphModule(model)
    with torch.no_grad():
        for param in module.params.values():
            param.mul_(1.1).add_(0.01)
    written = module.write_back()
    # same nodes, same value names, same initializer names, shapes and dtypes
    assert [(n.op_type, n.name) for n in written.graph] == [(n.op_type, n.name) for n in model.graph]
    assert {k: (v.shape, v.dtype) for k, v in written.graph.initializers.items()} == \
        {k: (v.shape, v.dtype) for k, v in model.graph.initializers.items()}
    changed = [n for n in written.graph.initializers
               if not np.array_equal(written.graph.initializers[n].const_value.numpy(), before[n])]
    assert sorted(changed) == sorted(module.trainable_names)
    # the source model is untouched
    for name, value in model.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), before[name])
    assert check_parity(module, written, {"input": digits_nchw.val.take(8).inputs["input"]}) < 1e-5


def test_an_op_the_bridge_cannot_run_is_refused_by_name():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], np.eye(3, dtype=np.float32).ravel())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"),
             helper.make_node("Einsum", ["h"], ["y"], name="my_einsum", equation="ij->ij")]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match=r"my_einsum \(Einsum\)"):
        GraphModule(ir.serde.deserialize_model(proto))
