"""LowRank: exact at full rank, error falls with rank, fewer MACs, Conv and transformer layers,
no factoring without gain, and data-aware beats plain SVD on skewed activations."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_compress.data import Dataset
from onnx_compress.errors import PassRefusedError, SettingError
from onnx_compress.model_io import load_model
from onnx_compress.passes import LowRank, LowRankSettings, Normalize
from onnx_compress.passes.lowrank.factorize import decompose
from onnx_compress.passes.lowrank.rewrite import NameScope, factor_node
from onnx_compress.passes.gram import conv_geometry, im2col
from onnx_compress.passes.lowrank.targets import find_targets
from onnx_compress.passes.registry import pass_class
from onnx_compress.runtime import Runner, expose_values
from onnx_compress.stats import count_macs, count_params

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers, opset: int = 18) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers.items()])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _f32(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _low_rank(k: int, n: int, rank: int) -> np.ndarray:
    return (_f32(k, rank) @ _f32(rank, n) / np.sqrt(rank)).astype(np.float32)


def _layer_models() -> dict[str, tuple[ir.Model, dict[str, np.ndarray]]]:
    """One small model per supported layer form, with an input batch."""
    fi = helper.make_tensor_value_info
    models = {}
    models["matmul_3d"] = (_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [fi("x", TensorProto.FLOAT, ["batch", "seq", 48])], [fi("y", TensorProto.FLOAT, ["batch", "seq", 40])],
        {"w": _f32(48, 40)}), {"x": _f32(2, 5, 48)})
    models["gemm_transB_alpha_beta"] = (_model(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=1, alpha=0.5, beta=2.0)],
        [fi("x", TensorProto.FLOAT, ["batch", 48])], [fi("y", TensorProto.FLOAT, ["batch", 40])],
        {"w": _f32(40, 48), "c": _f32(40)}), {"x": _f32(3, 48)})
    models["gemm_transA_no_bias"] = (_model(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transA=1, alpha=1.5)],
        [fi("x", TensorProto.FLOAT, [48, "batch"])], [fi("y", TensorProto.FLOAT, ["batch", 40])],
        {"w": _f32(48, 40)}), {"x": _f32(48, 3)})
    models["conv_strided_padded_dilated"] = (_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", strides=[2, 1], pads=[1, 2, 0, 1],
                          dilations=[1, 2], kernel_shape=[3, 3])],
        [fi("x", TensorProto.FLOAT, ["batch", 6, 11, 12])], [fi("y", TensorProto.FLOAT, ["batch", 16, 5, 11])],
        {"w": _f32(16, 6, 3, 3), "b": _f32(16)}), {"x": _f32(2, 6, 11, 12)})
    models["conv_same_upper"] = (_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[2, 2], auto_pad="SAME_UPPER")],
        [fi("x", TensorProto.FLOAT, ["batch", 6, 9, 10])], [fi("y", TensorProto.FLOAT, ["batch", 16, 5, 5])],
        {"w": _f32(16, 6, 2, 3)}), {"x": _f32(2, 6, 9, 10)})
    return models


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return Runner(model).run(feeds)


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _checked(model: ir.Model) -> None:
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


@pytest.mark.parametrize("kind", list(_layer_models()))
def test_full_rank_factors_reproduce_every_layer_form(kind):
    model, feeds = _layer_models()[kind]
    expected = _run(model, feeds)[0]
    work = model.clone()
    (target,), _ = find_targets(work.graph, LowRankSettings(min_size=0))
    decomposition = decompose(target.matrix())
    a, b = decomposition.factors(decomposition.full_rank)
    factor_node(work.graph, target, a, b, NameScope(work.graph))
    _checked(work)
    assert [n.op_type for n in work.graph] != [n.op_type for n in model.graph]
    assert len(list(work.graph)) == 2 and "w" not in work.graph.initializers
    np.testing.assert_allclose(_run(work, feeds)[0], expected, rtol=1e-4, atol=1e-4)
    assert work.graph.outputs[0].name == "y"


@pytest.mark.parametrize("kind", ["conv_strided_padded_dilated", "conv_same_upper"])
def test_conv_patches_reproduce_the_convolution(kind):
    model, feeds = _layer_models()[kind]
    node = next(iter(model.graph))
    w = node.inputs[1].const_value.numpy()
    expected = _run(model, feeds)[0]
    if len(node.inputs) > 2:
        expected = expected - node.inputs[2].const_value.numpy()[None, :, None, None]
    patches = im2col(feeds["x"], conv_geometry(node, feeds["x"].shape[2:]))
    got = (patches @ w.reshape(w.shape[0], -1).T).reshape(expected.shape[0], *expected.shape[2:], -1)
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), expected, rtol=1e-4, atol=1e-4)


def test_exactly_low_rank_weights_are_reproduced_at_their_rank():
    fi = helper.make_tensor_value_info
    model = _model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "c"], ["y"], name="down", transB=1)],
        [fi("x", TensorProto.FLOAT, ["batch", 64])], [fi("y", TensorProto.FLOAT, ["batch", 32])],
        {"w1": _low_rank(64, 96, 6), "w2": _low_rank(32, 96, 5), "c": _f32(32)})
    feeds = {"x": _f32(16, 64)}
    before = [n.op_type for n in model.graph]
    result = LowRank(energy=1.0, min_size=0)(model)
    assert result.modified and [layer.rank for layer in result.factored] == [6, 5]
    _checked(result.model)
    np.testing.assert_allclose(_run(result.model, feeds)[0], _run(model, feeds)[0], rtol=1e-4, atol=1e-4)
    assert all(layer.weight_error < 1e-5 for layer in result.factored)
    assert result.params_after == result.params_before - 64 * 96 - 96 * 32 + 6 * (64 + 96) + 5 * (96 + 32)
    assert [n.op_type for n in model.graph] == before and "w1" in model.graph.initializers  # input untouched


@pytest.fixture(scope="module")
def seed_cnn(torch_seed_onnx):
    return Normalize()(load_model(torch_seed_onnx)).model


def _layer_output_error(original: ir.Model, candidate: ir.Model, value: str, feeds) -> float:
    """Relative error of one intermediate value (bias removed) measured in ONNX Runtime."""
    want = Runner(expose_values(original, [value])).run(feeds, [value])[0]
    got = Runner(expose_values(candidate, [value])).run(feeds, [value])[0]
    return _rel(got, want)


def test_error_falls_and_macs_and_params_fall_as_ranks_are_cut(seed_cnn, digits_nchw):
    test = digits_nchw.test.inputs
    reference = _run(seed_cnn, test)[0]
    macs_before, _ = count_macs(seed_cnn)
    errors, weight_errors, calib_errors, macs, params = [], [], [], [], []
    for ratio in (0.1, 0.25, 0.5):
        result = LowRank(rank_ratio=ratio, op_types=("Gemm",), calibration=digits_nchw.calib.take(32),
                         method="svd")(seed_cnn)
        fc1 = next(layer for layer in result.layers if layer.weight == "fc1.weight")
        assert fc1.factored and fc1.rank == int(np.ceil(ratio * 128))
        errors.append(_rel(_run(result.model, test)[0], reference))
        weight_errors.append(fc1.weight_error)
        calib_errors.append(fc1.output_error)
        macs.append(count_macs(result.model)[0])
        params.append(count_params(result.model))
        assert params[-1] == result.params_after
    assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1] * 2
    assert weight_errors == sorted(weight_errors, reverse=True)
    assert calib_errors == sorted(calib_errors, reverse=True)
    assert macs == sorted(macs) and macs[-1] < macs_before
    assert params == sorted(params) and params[-1] < result.params_before
    # fc1 at rank 64: 1600*128 MACs per sample become 64*(1600+128)
    assert macs_before - macs[-1] >= 1600 * 128 - 64 * (1600 + 128)


def test_conv_is_factored_into_kxk_then_1x1_and_reports_measured_error(seed_cnn, digits_nchw):
    calib = digits_nchw.calib.take(64)
    result = LowRank(rank_ratio=0.25, op_types=("Conv",), min_size=1000, calibration=calib)(seed_cnn)
    assert result.method == "whitened"
    conv2 = next(layer for layer in result.layers if layer.weight == "conv2.weight")
    assert conv2.factored and conv2.rank == 16 and conv2.shape == (288, 64)
    assert conv2.params_after == 16 * (288 + 64)
    conv1 = next(layer for layer in result.layers if layer.weight == "conv1.weight")
    assert not conv1.factored and "min_size" in conv1.reason
    convs = [n for n in result.model.graph if n.op_type == "Conv"]
    assert len(convs) == 3
    first, second = convs[1], convs[2]
    assert first.inputs[1].const_value.shape.numpy() == (16, 32, 3, 3) and len(first.inputs) == 2
    assert second.inputs[1].const_value.shape.numpy() == (64, 16, 1, 1)
    assert second.inputs[2].name == "conv2.bias" and tuple(second.attributes.get_ints("kernel_shape")) == (1, 1)
    assert tuple(first.attributes.get_ints("strides")) == (1, 1) and first.attributes.get_int("group") == 1
    _checked(result.model)
    # the reported calibration error is the error ONNX Runtime measures on that layer's output
    output = first.outputs[0].uses()[0].node.outputs[0].name
    bias = seed_cnn.graph.initializers["conv2.bias"].const_value.numpy()[None, :, None, None]
    want = Runner(expose_values(seed_cnn, [output])).run(calib.inputs, [output])[0] - bias
    got = Runner(expose_values(result.model, [output])).run(calib.inputs, [output])[0] - bias
    assert _rel(got, want) == pytest.approx(conv2.output_error, rel=1e-3)


def test_a_layer_that_would_not_gain_is_left_alone(seed_cnn):
    result = LowRank(energy=0.9999, op_types=("Gemm",), min_size=0)(seed_cnn)
    fc2 = next(layer for layer in result.layers if layer.weight == "fc2.weight")
    assert not fc2.factored and fc2.rank == 10 and fc2.max_saving_rank == 9
    assert "save MACs and bytes" in fc2.reason and fc2.params_after == fc2.params_before
    unchanged = LowRank(rank_ratio=1.0, min_size=0)(seed_cnn)
    assert not unchanged.modified and unchanged.params_after == unchanged.params_before
    assert all(not layer.factored and layer.reason for layer in unchanged.layers)
    assert [n.op_type for n in unchanged.model.graph] == [n.op_type for n in seed_cnn.graph]


def _skewed_model(k: int = 128, n: int = 96) -> tuple[ir.Model, Dataset, Dataset]:
    """A MatMul whose input channels have scales spread over three decades and correlated."""
    fi = helper.make_tensor_value_info
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
                   [fi("x", TensorProto.FLOAT, ["batch", k])], [fi("y", TensorProto.FLOAT, ["batch", n])],
                   {"w": _f32(k, n)})
    scales = np.exp(np.linspace(-3.5, 3.5, k))
    mixing = np.linalg.qr(RNG.standard_normal((k, k)))[0] * 0.3 + np.eye(k)

    def sample(count: int) -> Dataset:
        return Dataset({"x": ((RNG.standard_normal((count, k)) * scales) @ mixing).astype(np.float32)})

    return model, sample(512), sample(256)


def test_data_aware_beats_plain_svd_at_equal_rank_on_skewed_activations():
    model, calib, val = _skewed_model()
    reference = _run(model, val.inputs)[0]
    measured, reported = {}, {}
    for method in ("svd", "asvd", "whitened"):
        result = LowRank(rank_ratio=0.25, method=method, calibration=calib)(model)
        assert result.method == method and result.factored[0].rank == 24
        measured[method] = _rel(_run(result.model, val.inputs)[0], reference)  # held-out data
        reported[method] = result.factored[0].output_error
    # plain SVD loses ~65 % of the output at rank 24 of 96; whitened ~22 %, ASVD in between
    assert measured["whitened"] < 0.5 * measured["svd"]
    assert measured["whitened"] < measured["asvd"] < measured["svd"]
    assert reported["whitened"] < reported["asvd"] < reported["svd"]
    # without data the same rank comes from plain SVD, and the result says so
    blind = LowRank(rank_ratio=0.25)(model)
    assert blind.method == "svd" and blind.factored[0].output_error is None


def test_max_error_keeps_every_layer_within_the_bound(seed_cnn, digits_nchw):
    calib = digits_nchw.calib.take(96)
    result = LowRank(max_error=0.05, min_size=1000, calibration=calib)(seed_cnn)
    assert result.factored
    for layer in result.layers:
        if layer.output_error is not None and layer.factored:
            assert layer.output_error <= 0.05
    tighter = LowRank(max_error=0.02, min_size=1000, calibration=calib)(seed_cnn)
    ranks = {layer.node: layer.rank for layer in result.layers if layer.rank}
    assert all(layer.rank >= ranks[layer.node] for layer in tighter.layers if layer.rank)
    with pytest.raises(PassRefusedError, match="calibration"):
        LowRank(max_error=0.05)(seed_cnn)
    with pytest.raises(PassRefusedError, match="calibration"):
        LowRank(method="whitened")(seed_cnn)


@pytest.fixture(scope="module")
def minilm(minilm_onnx):
    return Normalize()(load_model(minilm_onnx)).model


def test_transformer_attention_and_ffn_projections_factor(minilm, minilm_texts):
    """Layer 0 of MiniLM: Q, K, V, output projection, FFN up and down (batched 3-D inputs)."""
    weighted = [n for n in minilm.graph if n.op_type == "MatMul" and n.inputs[1].is_initializer()]
    layer0 = weighted[:6]
    shapes = [tuple(n.inputs[1].const_value.shape.numpy()) for n in layer0]
    assert shapes == [(384, 384)] * 4 + [(384, 1536), (1536, 384)]
    exclude = tuple(n.name for n in minilm.graph if n.op_type == "MatMul" and n not in layer0)
    calib, val = minilm_texts["calib"].take(16), minilm_texts["val"].take(24)
    reference = _run(minilm, val.inputs)[0]
    cosines = {}
    for method in ("svd", "whitened"):
        result = LowRank(rank_ratio=0.3, exclude=exclude, method=method, calibration=calib)(minilm)
        assert [layer.node for layer in result.factored] == [n.name for n in layer0]
        assert [layer.rank for layer in result.factored] == [116] * 6
        new = {n.name: n for n in result.model.graph}
        for node in layer0:
            first, second = new[f"{node.name}_lowrank_a"], new[f"{node.name}_lowrank_b"]
            k, n = node.inputs[1].const_value.shape.numpy()
            assert first.inputs[0].name == node.inputs[0].name  # same 3-D activation feeds it
            assert first.inputs[1].const_value.shape.numpy() == (k, 116)
            assert second.inputs[1].const_value.shape.numpy() == (116, n)
            assert second.outputs[0].name == node.outputs[0].name
            assert second.inputs[0].shape is not None and second.inputs[0].shape[-1] == 116
        out = _run(result.model, val.inputs)[0]
        cosines[method] = float(np.mean(np.sum(out * reference, axis=1)))
    # measured: plain SVD 0.93, whitened 0.96 mean embedding cosine (layer 0 alone at 30 % rank)
    assert cosines["whitened"] > cosines["svd"] + 0.01 and cosines["whitened"] > 0.95


def test_settings_are_validated_scaled_and_serialize():
    with pytest.raises(SettingError, match="only one of"):
        LowRank(energy=0.9, rank_ratio=0.5)
    with pytest.raises(SettingError, match="energy"):
        LowRank(energy=1.5)
    with pytest.raises(SettingError, match="rank_ratio"):
        LowRank(rank_ratio=0)
    with pytest.raises(SettingError, match="method"):
        LowRank(method="tucker")
    with pytest.raises(SettingError, match="op_types"):
        LowRank(op_types=("ConvTranspose",))
    with pytest.raises(SettingError, match="min_size"):
        LowRank(min_size=-1)
    assert LowRank().settings.criterion == ("energy", 0.99)
    assert LowRank(energy=0.9).scaled(0.5).settings.energy == pytest.approx(0.95)
    assert LowRank(rank_ratio=0.2).scaled(0.5).settings.rank_ratio == pytest.approx(0.6)
    assert LowRank(max_error=0.1).scaled(0.5).settings.max_error == pytest.approx(0.05)
    assert LowRank().scaled(0.5).settings.energy == pytest.approx(0.995)
    with pytest.raises(SettingError, match="strength"):
        LowRank().scaled(0)
    data = {"x": np.zeros((2, 4), np.float32)}
    assert LowRank(energy=0.9, calibration=data).scaled(0.5).calibration is not None
    settings = LowRank(rank_ratio=0.3, exclude=("a",)).settings.as_dict()
    assert pass_class("lowrank").from_dict(settings).settings == LowRankSettings(rank_ratio=0.3, exclude=("a",))


def test_unsafe_or_unsupported_layers_are_left_alone_with_reasons():
    fi = helper.make_tensor_value_info
    model = _model(
        [helper.make_node("MatMul", ["x", "shared"], ["a"], name="shared_1"),
         helper.make_node("MatMul", ["x", "shared"], ["b"], name="shared_2"),
         helper.make_node("MatMul", ["left", "x2"], ["c"], name="left_const"),
         helper.make_node("MatMul", ["x", "x2"], ["d"], name="no_weight"),
         helper.make_node("Conv", ["img", "gw"], ["e"], name="grouped", group=2),
         helper.make_node("MatMul", ["x_int", "w_int"], ["f"], name="integer"),
         helper.make_node("MatMul", ["x", "small"], ["g"], name="small")],
        [fi("x", TensorProto.FLOAT, [4, 64]), fi("x2", TensorProto.FLOAT, [64, 64]),
         fi("img", TensorProto.FLOAT, [1, 64, 8, 8]), fi("x_int", TensorProto.INT32, [4, 64])],
        [fi(name, TensorProto.FLOAT, None) for name in "abcdeg"] + [fi("f", TensorProto.INT32, None)],
        {"shared": _f32(64, 64), "left": _f32(64, 64), "gw": _f32(64, 32, 3, 3),
         "w_int": np.ones((64, 64), np.int32), "small": _f32(64, 8)})
    result = LowRank(rank_ratio=0.1, min_size=1000)(model)
    reasons = {layer.node: layer.reason for layer in result.layers}
    assert not result.modified
    assert "shared" in reasons["shared_1"] and "shared" in reasons["shared_2"]
    assert "left operand" in reasons["left_const"]
    assert "not a constant initializer" in reasons["no_weight"]
    assert "group=2" in reasons["grouped"]
    assert "not floating point" in reasons["integer"]
    assert "min_size" in reasons["small"]
    assert "excluded" in LowRank(exclude=("small",), min_size=0)(model).layers[-1].reason
