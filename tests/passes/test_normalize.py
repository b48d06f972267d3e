"""Normalize: weights behind constant subgraphs become initializers; the input is untouched."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_compress.errors import RecipeError, SettingError
from onnx_compress.passes import Normalize
from onnx_compress.runtime import Runner


def _old_style_model() -> ir.Model:
    """A MatMul whose weight is Constant -> Cast -> Transpose, and a BatchNorm after a Conv."""
    w = np.arange(12, dtype=np.float64).reshape(3, 4) / 10
    conv_w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "conv_w")
    bn = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
          [("scale", [2.0, 3.0]), ("bias", [0.5, -0.5]), ("mean", [0.1, 0.2]), ("var", [1.0, 4.0])]]
    nodes = [
        helper.make_node("Constant", [], ["w64"], value=numpy_helper.from_array(w, "w64")),
        helper.make_node("Cast", ["w64"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["w32"], ["wT"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wT"], ["y"], name="matmul"),
        helper.make_node("Conv", ["img", "conv_w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["z"], name="bn"),
    ]
    graph = helper.make_graph(
        nodes, "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2, 3, 3])],
        [conv_w, *bn],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _run(model: ir.Model, feeds):
    return Runner(model).run(feeds)


def test_constant_chain_becomes_an_initializer_and_outputs_match():
    model = _old_style_model()
    before_ops = [n.op_type for n in model.graph]
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32),
             "img": np.random.default_rng(1).standard_normal((5, 1, 3, 3)).astype(np.float32)}
    expected = _run(model, feeds)
    result = Normalize()(model)
    ops = [n.op_type for n in result.model.graph]
    assert sorted(ops) == ["Conv", "MatMul"]  # Constant/Cast/Transpose folded, BatchNorm fused
    matmul = next(n for n in result.model.graph if n.op_type == "MatMul")
    assert matmul.inputs[1].is_initializer() and matmul.inputs[1].const_value.shape == (4, 3)
    assert result.modified and result.ops_before["BatchNormalization"] == 1
    for got, want in zip(_run(result.model, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert [n.op_type for n in model.graph] == before_ops  # the input model is not modified


def test_batchnorm_kept_when_asked_and_opset_upgraded():
    result = Normalize(fold_batchnorm=False, min_opset=18)(_old_style_model())
    assert "BatchNormalization" in result.ops_after
    assert result.opset_before == 17 and result.opset_after == 18


def test_already_normal_model_is_unmodified(torch_seed_onnx):
    from onnx_compress.model_io import load_model

    result = Normalize()(load_model(torch_seed_onnx))
    assert not result.modified
    assert result.summary().startswith("11 -> 11 nodes")


def test_settings_are_validated_and_serialize():
    with pytest.raises(SettingError, match="iterations"):
        Normalize(iterations=0)
    with pytest.raises(SettingError, match="unknown setting.*valid settings"):
        Normalize(fold_bn=False)
    assert Normalize(fold_batchnorm=False).settings.as_dict()["fold_batchnorm"] is False
    with pytest.raises(RecipeError, match="unknown setting.*fold_batchnorm"):
        Normalize.from_dict({"fold_bn": True})
    assert Normalize.from_dict({"iterations": 2}).settings.iterations == 2

