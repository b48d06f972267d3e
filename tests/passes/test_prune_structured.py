"""Structured pruning on real exports: seed CNNs (torch, Keras/tf2onnx), residual, concat,
depthwise/grouped and transformer-FFN blocks, MiniLM; refusals with reasons.

The exactness tests zero chosen channels in the torch module (weights, bias, BatchNorm affine),
export, prune exactly that many channels, and compare with the unpruned model: removing
channels that carry zeros must not change the outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import onnx_compress as oc
from onnx_compress.errors import PassRefusedError, SettingError
from onnx_compress.model_io import load_model
from onnx_compress.passes import Normalize, PruneStructured
from onnx_compress.passes.prune.rules import RuleContext, align_dims, coupling_of
from onnx_compress.runtime import Runner, SessionSettings, detect_cpu


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return Runner(model, SessionSettings(provider="cpu")).run(feeds)


def _checked(model: ir.Model) -> None:
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def _top1(model: ir.Model, data) -> float:
    out = Runner(model, SessionSettings(provider="cpu")).run_dataset(data)
    return float((next(iter(out.values())).argmax(1) == data.labels).mean() * 100)


# ------------------------------------------------------------------ seed CNNs


@pytest.mark.parametrize("which", ["torch", "keras"])
def test_seed_cnn_half_pruned_is_smaller_faster_and_runs(which, torch_seed_onnx, keras_seed_onnx,
                                                         digits_nchw, digits_nhwc):
    path, data = (torch_seed_onnx, digits_nchw) if which == "torch" else (keras_seed_onnx, digits_nhwc)
    model = Normalize()(load_model(path)).model
    result = PruneStructured(ratio=0.5)(model)
    assert result.modified
    assert result.params_after <= 0.6 * result.params_before
    assert result.macs_after <= 0.6 * result.macs_before
    widths = sorted(w for g in result.pruned for w in g.widths.values())
    assert widths == [(32, 16), (64, 32), (128, 64)]
    (last,) = result.untouched  # the classifier feeds the model output through (Log)Softmax
    assert "channel axis" in last.reason and last.widths
    pruned = result.model
    _checked(pruned)
    assert [v.name for v in pruned.graph.inputs] == [v.name for v in model.graph.inputs]
    assert [v.name for v in pruned.graph.outputs] == [v.name for v in model.graph.outputs]
    batch = data.test.take(7).inputs
    assert _run(pruned, batch)[0].shape == (7, 10)
    # no fine-tuning: L2 filter pruning keeps most of the accuracy on this data (98 % before)
    assert _top1(pruned, data.test) > 85
    if which == "keras":
        # NHWC: Transpose(0,2,3,1) -> Reshape with a Shape/Gather/Concat target; the target is
        # rewritten as a constant and the dynamic shape computation is gone
        ops = [n.op_type for n in pruned.graph]
        assert "Shape" not in ops and "Transpose" in ops
        reshape = next(n for n in pruned.graph if n.op_type == "Reshape" and n.inputs[0].producer() is not None
                       and n.inputs[0].producer().op_type == "Transpose")
        batch_dim, features = reshape.inputs[1].const_value.numpy().tolist()
        assert batch_dim in (0, -1) and features == 25 * 32
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert conv.inputs[1].const_value.shape[0] == 32  # the input model is not modified


def test_ratio_zero_is_bit_exact_and_unmodified(torch_seed_onnx, digits_nchw):
    model = load_model(torch_seed_onnx)
    result = PruneStructured(ratio=0.0)(model)
    assert not result.modified and not result.pruned
    feeds = digits_nchw.test.take(5).inputs
    assert np.array_equal(_run(result.model, feeds)[0], _run(model, feeds)[0])


def test_global_scope_round_to_and_protect(torch_seed_onnx):
    model = load_model(torch_seed_onnx)
    rounded = PruneStructured(ratio=0.6, scope="global", round_to=8, importance="l1")(model)
    after = {w[1] for g in rounded.pruned for w in g.widths.values()}
    assert after and all(w % 8 == 0 for w in after)
    assert rounded.params_after < rounded.params_before
    auto = PruneStructured(ratio=0.5, round_to="auto")(model)
    block = detect_cpu().channel_multiple()[0]
    assert all(w[1] % block == 0 for g in auto.pruned for w in g.widths.values())
    assert any(f"round_to auto = {block}" in note for note in auto.notes)
    conv2 = next(n.name for n in model.graph if n.op_type == "Conv" and n.inputs[1].name == "conv2.weight")
    protected = PruneStructured(ratio=0.5, protect=[conv2])(model)
    by_name = {name: w for g in protected.groups for name, w in g.widths.items()}
    assert by_name[conv2] == (64, 64)
    conv1 = next(n.name for n in model.graph if n.op_type == "Conv" and n.inputs[1].name == "conv1.weight")
    assert by_name[conv1] == (32, 32)  # conv2 reads conv1's channels: protecting it keeps them
    assert any("protected node" in g.reason for g in protected.untouched)
    with pytest.raises(SettingError, match="protect: no node named"):
        PruneStructured(protect=["nope"])(model)


def test_a_cut_that_fails_verification_is_refused_not_returned(torch_seed_onnx, monkeypatch):
    """Safety net: if slicing ever produced a broken model, the group is left untouched."""
    from onnx_compress.passes.prune import slicers

    monkeypatch.setitem(slicers.NODE_FIXES, "Reshape", lambda node, fixer: None)  # a deliberately broken slicer
    model = load_model(torch_seed_onnx)
    result = PruneStructured(ratio=0.5)(model)
    failed = [g for g in result.untouched if g.reason.startswith("verification failed")]
    assert len(failed) == 1 and "node_conv2d_1" in failed[0].name
    assert len(result.pruned) == 2  # conv1 and fc1 still cut
    _checked(result.model)
    assert _run(result.model, {"input": np.zeros((3, 1, 28, 28), np.float32)})[0].shape == (3, 10)


def test_activation_importance_needs_and_uses_calibration(torch_seed_onnx, digits_nchw):
    model = load_model(torch_seed_onnx)
    with pytest.raises(PassRefusedError, match="calibration"):
        PruneStructured(importance="activation")(model)
    result = PruneStructured(ratio=0.25, importance="activation", calibration=digits_nchw.calib)(model)
    assert {g.importance for g in result.pruned} == {"activation"}
    assert _top1(result.model, digits_nchw.test) > 90


def test_settings_validation_and_scaled():
    with pytest.raises(SettingError, match="ratio"):
        PruneStructured(ratio=1.0)
    with pytest.raises(SettingError, match="importance"):
        PruneStructured(importance="taylor")
    with pytest.raises(SettingError, match="round_to"):
        PruneStructured(round_to=0)
    with pytest.raises(SettingError, match="round_to"):
        PruneStructured(round_to="fast")
    with pytest.raises(SettingError, match="layer_ratios"):
        PruneStructured(layer_ratios={"conv": 1.5})
    half = PruneStructured(ratio=0.6, layer_ratios={"a": 0.4}).scaled(0.5)
    assert half.settings.ratio == pytest.approx(0.3) and half.settings.layer_ratios == (("a", 0.2),)
    assert PruneStructured.from_dict({"ratio": 0.3, "protect": ["x"]}).settings.protect == ("x",)


# ------------------------------------------------------------------ small real blocks


class Residual(nn.Module):
    """stem -> [conv, relu, conv] + stem -> relu -> pool -> linear: the stem and the second
    conv share their channels through the Add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.c2 = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))

    def zero(self) -> None:
        for c in (1, 6):  # residual channels: every producer and the BatchNorm affine
            for tensor in (self.stem.weight, self.stem.bias, self.bn.weight, self.bn.bias, self.c2.weight, self.c2.bias):
                tensor[c] = 0
        for c in (0, 3, 9, 12):
            self.c1.weight[c] = 0
            self.c1.bias[c] = 0


class ConcatBlock(nn.Module):
    """Two branches concatenated on channels, then a conv reading both (index offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(12, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.flatten(torch.relu(self.c(y)), 1))

    def zero(self) -> None:
        for c in (2, 7):
            self.a.weight[c] = 0
            self.a.bias[c] = 0
        self.b.weight[1] = 0
        self.b.bias[1] = 0
        for c in (0, 5):
            self.c.weight[c] = 0
            self.c.bias[c] = 0


class DepthwiseGrouped(nn.Module):
    """stem -> depthwise (multiplier 2) -> grouped conv (2 groups) -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(16, 8, 1, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dw(torch.relu(self.stem(x))))
        return self.fc(torch.relu(self.grouped(x)).mean((2, 3)))

    def zero(self) -> None:
        # one unit of the stem group: stem channel c feeds depthwise outputs 2c, 2c+1, and the
        # grouped conv reads position j of both of its input groups (dw outputs j and j+8)
        for c in (1, 5):
            self.stem.weight[c] = 0
            self.stem.bias[c] = 0
        for k in (2, 3, 10, 11):
            self.dw.weight[k] = 0
            self.dw.bias[k] = 0
        for o in (2, 6):  # position 2 of both output groups of the grouped conv
            self.grouped.weight[o] = 0
            self.grouped.bias[o] = 0


class FeedForward(nn.Module):
    """A transformer FFN sub-block: LayerNorm(x + W2 gelu(W1 x)); the 64 neurons are prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(16, 64), nn.Linear(64, 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.down(nn.functional.gelu(self.up(x))))

    def zero(self) -> None:
        for j in range(0, 64, 4):
            self.up.weight[j] = 0
            self.up.bias[j] = 0


class ChannelSlice(nn.Module):
    """A slice of the channel axis, which pruning does not map: that group is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(6, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))[:, :6]
        return self.fc(torch.relu(self.b(y)).mean((2, 3)))

    def zero(self) -> None:
        for c in (0, 1):
            self.b.weight[c] = 0
            self.b.bias[c] = 0


_BLOCKS = {
    # name: (module, example input shape, ratio, expected (before, after) widths)
    "residual": (Residual, (1, 3, 8, 8), 0.25, [(8, 6), (8, 6), (16, 12)]),
    "concat": (ConcatBlock, (1, 3, 8, 8), 0.25, [(4, 3), (8, 6), (8, 6)]),
    "depthwise": (DepthwiseGrouped, (1, 3, 8, 8), 0.25, [(8, 6), (8, 6), (16, 12)]),
    "ffn": (FeedForward, (1, 5, 16), 0.25, [(64, 48)]),
}


@pytest.fixture(scope="module")
def blocks(tmp_path_factory) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Each block (random init, eval mode) with its chosen channels zeroed, exported to ONNX."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("prune_blocks")
    exported = {}
    for name, (cls, shape, _ratio, _widths) in {**_BLOCKS, "slice": (ChannelSlice, (1, 3, 8, 8), 0, [])}.items():
        module = cls().eval()
        for p in module.parameters():
            p.requires_grad_(False)
        if isinstance(getattr(module, "bn", None), nn.BatchNorm2d):
            module.bn.running_mean.uniform_(-0.5, 0.5)
            module.bn.running_var.uniform_(0.5, 2.0)
        module.zero()
        path = folder / f"{name}.onnx"
        oc.export_torch(module, torch.randn(*shape), path)
        exported[name] = (path, (3, *shape[1:]))
    return exported


@pytest.mark.parametrize("name", list(_BLOCKS))
def test_block_ratio_zero_is_bit_exact(blocks, name):
    path, shape = blocks[name]
    model = load_model(path)
    result = PruneStructured(ratio=0.0)(model)
    assert not result.modified
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert np.array_equal(_run(result.model, {"input": x})[0], _run(model, {"input": x})[0])


@pytest.mark.parametrize("name", list(_BLOCKS))
def test_block_pruning_zero_channels_keeps_outputs(blocks, name):
    path, shape = blocks[name]
    _cls, _shape, ratio, widths = _BLOCKS[name]
    model = load_model(path)
    result = PruneStructured(ratio=ratio)(model)
    assert result.modified
    assert sorted(w for g in result.pruned for w in g.widths.values()) == sorted(widths)
    _checked(result.model)
    assert result.params_after < result.params_before
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    expected = _run(model, {"input": x})[0]
    got = _run(result.model, {"input": x})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_block_pruning_real_channels_changes_outputs(blocks):
    """The exactness above is not vacuous: cutting channels that carry signal moves the outputs."""
    path, shape = blocks["residual"]
    model = load_model(path)
    result = PruneStructured(ratio=0.5)(model)  # more than the zeroed channels
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    assert np.abs(_run(result.model, {"input": x})[0] - _run(model, {"input": x})[0]).max() > 1e-3


def test_unsupported_coupling_is_left_untouched_with_reason(blocks):
    path, shape = blocks["slice"]
    model = load_model(path)
    result = PruneStructured(ratio=0.25)(model)
    refused = [g for g in result.untouched if "slices the channel axis" in g.reason]
    assert len(refused) == 1 and refused[0].widths and list(refused[0].widths.values())[0] == (8, 8)
    assert [w for g in result.pruned for w in g.widths.values()] == [(8, 6)]  # conv b still pruned
    _checked(result.model)
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, {"input": x})[0], _run(model, {"input": x})[0], atol=1e-5)


# ------------------------------------------------------------------ MiniLM (real pretrained transformer)


def _ffn_weights(model: ir.Model) -> list[tuple[ir.Value, ir.Value]]:
    """(W1 [384, 1536], b1 [1536]) of each FFN: MatMul -> Add(bias) -> ... (Erf GELU)."""
    found = []
    for node in model.graph:
        weight = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) > 1 else None
        if weight is None or weight.const_value is None or weight.const_value.shape[-1] != 1536:
            continue
        (use,) = list(node.outputs[0].uses())
        bias = next(v for v in use.node.inputs if v is not None and v.const_value is not None)
        found.append((weight, bias))
    return found


def test_minilm_ffn_neurons_pruned_attention_untouched(minilm_onnx, minilm_texts):
    model = Normalize()(load_model(minilm_onnx)).model
    ffn = _ffn_weights(model)
    assert len(ffn) == 6
    neurons = np.arange(0, 1536, 4)
    for weight, bias in ffn:  # zero a quarter of every FFN's neurons (W1 columns and b1)
        w, b = weight.const_value.numpy().copy(), bias.const_value.numpy().copy()
        w[:, neurons] = 0
        b[neurons] = 0
        weight.const_value, bias.const_value = ir.Tensor(w, name=weight.name), ir.Tensor(b, name=bias.name)
    result = PruneStructured(ratio=0.25)(model)
    assert sorted(w for g in result.pruned for w in g.widths.values()) == [(1536, 1152)] * 6
    reasons = " ".join(g.reason for g in result.untouched)
    assert "attention heads" in reasons and "LayerNormalization" in reasons
    assert result.params_before - result.params_after == 6 * 384 * (2 * 384 + 1)
    _checked(result.model)
    feeds = minilm_texts["val"].take(16).inputs
    expected = _run(model, feeds)[0]
    got = _run(result.model, feeds)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ hand-made graphs


def _model(nodes, inputs, outputs, initializers, opset=17) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _conv_bn_model(gamma: np.ndarray) -> ir.Model:
    rng = np.random.default_rng(0)
    c = len(gamma)
    weights = {
        "w": rng.standard_normal((c, 2, 3, 3)).astype(np.float32), "b": np.zeros(c, np.float32),
        "gamma": gamma.astype(np.float32), "beta": np.zeros(c, np.float32),
        "mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32),
        "fc": rng.standard_normal((3, c)).astype(np.float32), "fc_b": np.zeros(3, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 6, 6])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], weights)


def test_batchnorm_importance_cuts_smallest_gammas_exactly():
    gamma = np.array([1.0, 0.0, 2.0, 0.5, 0.0, 3.0, 0.0, 1.5])
    model = _conv_bn_model(gamma)
    result = PruneStructured(ratio=0.375, importance="bn")(model)
    (group,) = result.pruned
    assert group.importance == "bn" and group.widths == {"conv": (8, 5)}
    bn = next(n for n in result.model.graph if n.op_type == "BatchNormalization")
    assert sorted(bn.inputs[1].const_value.numpy().tolist()) == [0.5, 1.0, 1.5, 2.0, 3.0]
    x = np.random.default_rng(5).standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0], atol=1e-5)
    fallback = PruneStructured(ratio=0.5, importance="bn")(Normalize()(model).model)  # BatchNorm folded
    assert any("no BatchNormalization" in note for note in fallback.notes)


def _split_model(shape_output: bool) -> ir.Model:
    """conv(8) -> Split [4, 4] -> Add (couples channel c with c + 4) -> Reshape with a dynamic
    Shape-derived target -> Gemm. With ``shape_output`` the channel count also leaves the model."""
    rng = np.random.default_rng(1)
    weights = {"w": rng.standard_normal((8, 1, 1, 1)).astype(np.float32),
               "b": rng.standard_normal(8).astype(np.float32),
               "split": np.array([4, 4], np.int64), "idx": np.array([0], np.int64),
               "tail": np.array([16], np.int64),
               "fc": rng.standard_normal((16, 2)).astype(np.float32)}
    weights["w"][[1, 5]] = 0
    weights["b"][[1, 5]] = 0
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Split", ["c", "split"], ["s0", "s1"], name="split", axis=1),
        helper.make_node("Add", ["s0", "s1"], ["a"], name="add"),
        helper.make_node("Shape", ["a"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "idx"], ["batch"], name="gather"),
        helper.make_node("Concat", ["batch", "tail"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["a", "target"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc"], ["y"], name="fc"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])]
    if shape_output:
        outputs.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [4]))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 2, 2])], outputs, weights)


def test_split_sizes_and_shape_derived_reshape_are_rewritten():
    model = _split_model(shape_output=False)
    result = PruneStructured(ratio=0.25)(model)
    (group,) = result.pruned
    assert group.units_before == 4 and group.units_after == 3 and group.widths == {"conv": (8, 6)}
    split = next(n for n in result.model.graph if n.op_type == "Split")
    assert split.inputs[1].const_value.numpy().tolist() == [3, 3]
    assert "Shape" not in [n.op_type for n in result.model.graph]
    _checked(result.model)
    x = np.random.default_rng(6).standard_normal((3, 1, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0], atol=1e-5)


def test_channel_count_read_into_an_output_is_refused():
    result = PruneStructured(ratio=0.25)(_split_model(shape_output=True))
    assert not result.modified
    assert any("Shape 'shape'" in g.reason and "model output" in g.reason for g in result.untouched)


def test_align_dims_pairs_merges_and_symbols():
    assert align_dims(("n", 64, 5, 5), ("n", 1600)) == [([0], [0]), ([1, 2, 3], [1])]
    assert align_dims(("n", 5, 5, 64), ("n", 1600)) == [([0], [0]), ([1, 2, 3], [1])]
    assert align_dims(("b", "s", 384), ("b", "s", 12, 32)) == [([0], [0]), ([1], [1]), ([2], [2, 3])]
    assert align_dims(("n", 8, 1, 1), ("n", 8)) == [([0], [0]), ([1], [1])]
    assert align_dims(("b", 12, "s", 32), ("u", "s", 32)) == [([2], [1]), ([3], [2])]


def test_concat_with_model_input_pad_and_resize():
    """Concat(input, conv) keeps the input's channels and cuts the conv's at their offset;
    Pad and Resize on spatial axes pass the channels through."""
    rng = np.random.default_rng(2)
    weights = {"w1": rng.standard_normal((6, 3, 1, 1)).astype(np.float32), "b1": rng.standard_normal(6).astype(np.float32),
               "w2": rng.standard_normal((4, 9, 1, 1)).astype(np.float32), "b2": rng.standard_normal(4).astype(np.float32),
               "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
               "scales": np.array([1, 1, 2, 2], np.float32),
               "fc": rng.standard_normal((3, 4)).astype(np.float32)}
    weights["w1"][[1, 4]] = 0
    weights["b1"][[1, 4]] = 0
    weights["w2"][2] = 0
    weights["b2"][2] = 0
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Concat", ["x", "r1"], ["cat"], name="cat", axis=1),
        helper.make_node("Pad", ["cat", "pads"], ["padded"], name="pad"),
        helper.make_node("Resize", ["padded", "", "scales"], ["big"], name="resize", mode="nearest"),
        helper.make_node("Conv", ["big", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["y"], name="fc", transB=1),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], weights, opset=18)
    result = PruneStructured(ratio=0.34)(model)
    widths = {name: w for g in result.pruned for name, w in g.widths.items()}
    assert widths == {"conv1": (6, 4), "conv2": (4, 3)}
    conv2 = next(n for n in result.model.graph if n.name == "conv2")
    assert conv2.inputs[1].const_value.shape[1] == 7  # 3 input channels + 4 kept
    _checked(result.model)
    x = np.random.default_rng(7).standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0], atol=1e-5)


def test_dynamic_matmul_contraction_couples_both_projections():
    """scores = (x Wa) (x Wb)^T: channel k of both projections is one unit (a contraction)."""
    rng = np.random.default_rng(3)
    wa, wb = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((8, 6)).astype(np.float32)
    wa[:, [0, 3]] = 0
    wb[:, [0, 3]] = 0
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"], name="proj_a"),
        helper.make_node("MatMul", ["x", "wb"], ["b"], name="proj_b"),
        helper.make_node("Transpose", ["b"], ["bt"], name="t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["a", "bt"], ["y"], name="scores"),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5, 5])], {"wa": wa, "wb": wb})
    result = PruneStructured(ratio=0.34)(model)
    (group,) = result.pruned
    assert group.widths == {"proj_a": (6, 4), "proj_b": (6, 4)} and group.units_before == 6
    x = np.random.default_rng(8).standard_normal((2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], _run(model, {"x": x})[0], atol=1e-5)


def test_a_rule_refuses_a_node_whose_shapes_are_unknown_naming_the_value():
    x = ir.Value(name="x", shape=None)
    y = ir.Value(name="y", shape=ir.Shape([1, 4]))
    relu = ir.Node("", "Relu", [x], num_outputs=1)
    norm = ir.Node("", "InstanceNormalization", [y, y, y], num_outputs=1)  # rank 2 is enough
    pool = ir.Node("", "GlobalAveragePool", [ir.Value(name="v", shape=ir.Shape([4]))], num_outputs=1)
    reshape = ir.Node("", "Reshape", [y, ir.Value(name="target")], num_outputs=1)
    reshape.outputs[0].name = "r"
    concat = ir.Node("", "Concat", [y, x], attributes=[ir.AttrInt64("axis", 1)], num_outputs=1)
    concat.outputs[0].shape = ir.Shape([1, 8])
    split = ir.Node("", "Split", [y], attributes=[ir.AttrInt64("axis", 1)], num_outputs=2)
    nodes = [relu, norm, pool, reshape, concat, split]
    graph = ir.Graph([x, y], [out for node in nodes for out in node.outputs], nodes=nodes, opset_imports={"": 18})
    ctx = RuleContext(ir.Model(graph, ir_version=9))
    reasons = [coupling_of(node, ctx).default_reason for node in nodes]
    assert reasons[0] == "the shape of 'x' is unknown"
    assert reasons[1] == "InstanceNormalization normalizes per channel of axis 1 only"  # rank 2: the rule runs
    assert reasons[2] == "the shape of 'v' is unknown"  # rank 1 < the 2 a pool needs
    assert reasons[3] == "the shape of 'r' is unknown"  # the first unknown of input 0, output 0
    assert reasons[4:] == ["an input of Concat has an unknown shape", "an output of Split has an unknown shape"]
