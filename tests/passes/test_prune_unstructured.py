"""Unstructured magnitude pruning: the requested sparsity is reached, N:M patterns hold, the
first/last layers stay dense, the compressed size falls, the input model is untouched."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_compress.errors import SettingError
from onnx_compress.model_io import load_model
from onnx_compress.passes import Normalize, PruneUnstructured
from onnx_compress.runtime import Runner, SessionSettings


def _weights(model) -> dict[str, np.ndarray]:
    return {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_layer_ratio_is_reached_in_every_layer(torch_seed_onnx, ratio):
    model = load_model(torch_seed_onnx)
    original = {k: v.copy() for k, v in _weights(model).items()}
    result = PruneUnstructured(ratio=ratio)(model)
    assert result.modified and len(result.layers) == 2  # conv2 and fc1; conv1 and fc2 stay dense
    for layer in result.layers:
        assert abs(layer.sparsity - ratio) < 0.01
    assert abs(result.sparsity - ratio) < 0.01
    pruned = _weights(result.model)
    for name in ("conv1.weight", "fc2.weight"):
        assert np.array_equal(pruned[name], original[name])
    # the zeros are the smallest magnitudes: every kept weight is at least every zeroed one
    w, p = original["fc1.weight"], pruned["fc1.weight"]
    assert np.abs(w[p != 0]).min() >= np.abs(w[p == 0]).max()
    assert all(np.array_equal(v, original[k]) for k, v in _weights(model).items())  # input untouched


def test_global_ratio_and_compressed_size(torch_seed_onnx, digits_nchw):
    model = load_model(torch_seed_onnx)
    result = PruneUnstructured(ratio=0.8, scope="global", protect_first_last=False)(model)
    assert abs(result.sparsity - 0.8) < 0.01
    by_layer = {layer.weight: layer.sparsity for layer in result.layers}
    assert by_layer["fc1.weight"] > by_layer["conv1.weight"]  # one ranking: layers differ
    assert result.compressed_after < 0.5 * result.compressed_before
    assert result.size_bytes > result.compressed_after
    out = Runner(result.model, SessionSettings(provider="cpu")).run_dataset(digits_nchw.test)["output"]
    assert out.shape == (len(digits_nchw.test), 10)


def test_nm_pattern_along_the_reduction_axis(keras_seed_onnx):
    model = Normalize()(load_model(keras_seed_onnx)).model
    result = PruneUnstructured(nm="2:4", protect_first_last=False)(model)
    assert abs(result.sparsity - 0.5) < 0.01 and result.pattern == "2:4"
    for layer in result.layers:
        weight = result.model.graph.initializers[layer.weight].const_value.numpy()
        if weight.ndim == 4:  # Conv [C_out, C_in, kh, kw]: runs of 4 input channels
            runs = np.moveaxis(weight, 1, -1)
        else:  # MatMul [K, N]: runs along K
            runs = np.moveaxis(weight, 0, -1)
        k = runs.shape[-1] // 4 * 4
        blocks = runs[..., :k].reshape(*runs.shape[:-1], -1, 4)
        assert ((blocks != 0).sum(-1) <= 2).all(), layer.weight


def test_protect_and_settings():
    with pytest.raises(SettingError, match="either ratio or nm"):
        PruneUnstructured(ratio=0.5, nm="2:4")
    with pytest.raises(SettingError, match="nm must"):
        PruneUnstructured(nm="4:2")
    with pytest.raises(SettingError, match="ratio"):
        PruneUnstructured(ratio=1.2)
    assert PruneUnstructured().settings.effective_ratio == 0.5
    assert PruneUnstructured(ratio=0.6).scaled(0.5).settings.ratio == pytest.approx(0.3)
    assert PruneUnstructured(nm=(2, 4)).scaled(0.5) is None
    assert PruneUnstructured.from_dict({"nm": [1, 4]}).settings.effective_ratio == 0.75


def test_protected_layer_stays_dense(torch_seed_onnx):
    model = load_model(torch_seed_onnx)
    fc1 = next(n.name for n in model.graph if n.op_type == "Gemm" and n.inputs[1].name == "fc1.weight")
    result = PruneUnstructured(ratio=0.5, protect=[fc1])(model)
    assert [layer.weight for layer in result.layers] == ["conv2.weight"]
    assert result.skipped[fc1] == "protected"
    with pytest.raises(SettingError, match="no node named"):
        PruneUnstructured(protect=["missing"])(model)
