"""Activation smoothing (SmoothQuant) before dynamic int8: exact in float, other readers of the
smoothed input untouched, and a real gain on an input with outlier channels."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_compress.data import Dataset
from onnx_compress.errors import SettingError
from onnx_compress.passes import Quantize
from onnx_compress.passes.quantize.smooth import input_absmax, smooth, smoothing_groups
from onnx_compress.runtime import Runner
from onnx_compress.runtime.metrics import cosine_per_sample

WIDTH = 64


def outlier_model(seed: int = 0) -> ir.Model:
    """x -> Mul(c) = a (channels 0-2 scaled by 60: outliers) -> mm0 -> Relu -> mm1 -> y;
    a second reader of ``a``: r = Relu(a)."""
    rng = np.random.default_rng(seed)
    scale = np.ones(WIDTH, np.float32)
    scale[:3] = 60.0
    w0 = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    w0[:3] /= 60.0  # the outlier channels carry a normal share of the signal
    w1 = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["a"], name="outliers"),
        helper.make_node("MatMul", ["a", "w0"], ["h0"], name="mm0"),
        helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
        helper.make_node("MatMul", ["r0", "w1"], ["y"], name="mm1"),
        helper.make_node("Relu", ["a"], ["r"], name="other_reader"),
    ]
    inits = [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(w0, "w0"),
             numpy_helper.from_array(w1, "w1")]
    graph = helper.make_graph(
        nodes, "outliers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH]),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, ["batch", WIDTH])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def inputs(count: int, seed: int) -> Dataset:
    return Dataset({"x": np.random.default_rng(seed).standard_normal((count, WIDTH)).astype(np.float32)})


def test_smoothing_is_exact_in_float_and_leaves_other_readers_alone():
    model = outlier_model()
    groups = smoothing_groups(model, ["mm0", "mm1"])
    assert [(g.input_name, g.nodes) for g in groups] == [("a", ("mm0",)), ("r0", ("mm1",))]
    absmax = input_absmax(model, groups, inputs(64, seed=1))
    assert absmax["a"][:3].min() > 20 * absmax["a"][3:].max()  # the outliers are seen
    smoothed = smooth(model, groups, absmax, alpha=0.5)
    assert sum(node.op_type == "Mul" for node in smoothed.graph) == 3  # the model's own + two smoothing
    reader = next(node for node in smoothed.graph if node.name == "other_reader")
    assert reader.inputs[0].name == "a"  # the residual-like reader keeps the original values
    feeds = inputs(16, seed=2).inputs
    expected, got = Runner(model).run(feeds), Runner(smoothed).run(feeds)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
    # the input model is untouched: its MatMul still reads the original weight
    assert next(node for node in model.graph if node.name == "mm0").inputs[1].name == "w0"
    with pytest.raises(ValueError, match="alpha"):
        smooth(model, groups, absmax, alpha=1.0)


def test_smoothing_makes_dynamic_int8_more_accurate_on_outlier_channels():
    model = outlier_model()
    calib, val, test = inputs(128, seed=3), inputs(128, seed=4), inputs(256, seed=5)
    common = dict(mode="dynamic", calibration=calib, validation=val, metric="cosine", guard="off",
                  min_weight_elements=0)
    plain = Quantize(smooth="off", **common)(model)
    smoothed = Quantize(smooth=0.5, **common)(model)
    assert plain.modified and smoothed.modified
    assert sorted(smoothed.quantized) == ["mm0", "mm1"]
    choice = next(c for c in smoothed.choices if c.setting == "smooth")
    assert choice.value == 0.5 and "plain" in choice.reason
    assert not any(c.setting == "smooth" for c in plain.choices)
    expected = Runner(model).run(test.inputs)[0]
    error_plain = 1 - cosine_per_sample(expected, Runner(plain.model).run(test.inputs)[0]).mean()
    error_smoothed = 1 - cosine_per_sample(expected, Runner(smoothed.model).run(test.inputs)[0]).mean()
    assert error_smoothed < error_plain / 3, (error_plain, error_smoothed)


def test_smooth_settings_are_checked():
    for bad in (1.5, 0, "yes", True):
        with pytest.raises(SettingError, match="smooth"):
            Quantize(smooth=bad)
    with pytest.raises(SettingError, match="calibration"):
        Quantize(mode="dynamic", smooth=0.5, guard="off")(outlier_model())


def test_attention_outputs_are_smoothed_inside_the_value_projection(minilm_onnx, minilm_texts):
    """MiniLM after the fusions: the six MultiHeadAttention outputs need no Mul (the division
    goes into the value projections' weight columns and bias), the other 18 inputs get one; the
    embeddings do not move."""
    from onnx_compress.model_io import load_model
    from onnx_compress.passes import Fuse

    fused = Fuse(layer_norm="unfused")(load_model(minilm_onnx)).model
    matmuls = [node.name for node in fused.graph if node.op_type == "MatMul"]
    groups = smoothing_groups(fused, matmuls)
    assert len(groups) == 24  # per layer: Q/K/V, attention output, FFN in, FFN out
    absmax = input_absmax(fused, groups, minilm_texts["calib"].take(16))
    smoothed = smooth(fused, groups, absmax, alpha=0.85)
    muls_before = sum(node.op_type == "Mul" for node in fused.graph)
    added = [node for node in smoothed.graph if node.op_type == "Mul" and node.name.startswith("smooth_")]
    assert len(added) == 18 and sum(node.op_type == "Mul" for node in smoothed.graph) == muls_before + 18
    attention = [node for node in smoothed.graph if node.op_type == "MultiHeadAttention"]
    assert all(node.inputs[3].name.endswith("_value_folded") for node in attention)
    sample = minilm_texts["val"].take(8)
    expected = Runner(fused).run_dataset(sample)["embedding"]
    got = Runner(smoothed).run_dataset(sample)["embedding"]
    assert np.abs(expected - got).max() < 1e-4


@pytest.mark.parametrize("export", ["keras_encoder_onnx", pytest.param("minilm_ts_onnx", marks=pytest.mark.slow)])
def test_smoothing_on_other_exporters_folds_attention_outputs_and_keeps_outputs(export, request, minilm_texts,
                                                                               keras_encoder_data):
    """The fused TorchScript MiniLM and the fused Keras/tf2onnx encoder: every MultiHeadAttention
    output is smoothed inside its value projection (no Mul), the other MatMul inputs get one Mul;
    real-token outputs do not move."""
    from onnx_compress.model_io import load_model
    from onnx_compress.passes import Fuse, Normalize

    data = keras_encoder_data if export == "keras_encoder_onnx" else minilm_texts
    fused = Fuse(layer_norm="unfused")(Normalize()(load_model(request.getfixturevalue(export))).model).model
    attention = [node for node in fused.graph if node.op_type == "MultiHeadAttention"]
    matmuls = [node.name for node in fused.graph if node.op_type == "MatMul" and node.inputs[1].const_value is not None]
    groups = smoothing_groups(fused, matmuls)
    absmax = input_absmax(fused, groups, data["calib"].take(16))
    smoothed = smooth(fused, groups, absmax, alpha=0.75)
    added = [node for node in smoothed.graph if node.op_type == "Mul" and node.name.startswith("smooth_")]
    assert attention and len(added) == len(groups) - len(attention)
    folded = [node for node in smoothed.graph if node.op_type == "MatMul" and node.inputs[1].name.endswith("_value_folded")]
    assert len(folded) == len(attention)
    sample = data["val"].take(8)
    real = sample.inputs["attention_mask"].astype(bool)
    expected = Runner(fused).run_dataset(sample)["last_hidden_state"]
    got = Runner(smoothed).run_dataset(sample)["last_hidden_state"]
    assert np.abs(expected[real] - got[real]).max() < 1e-3
