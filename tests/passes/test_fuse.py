"""Transformer fusions on the real all-MiniLM-L6-v2 export: what fuses, that outputs do not move,
that int8 quantization still reaches the projections, and that a CNN comes back unchanged."""

from __future__ import annotations

import pytest

from onnx_compress.errors import SettingError
from onnx_compress.model_io import load_model
from onnx_compress.passes.fuse import Fuse
from onnx_compress.runtime import Runner
from onnx_compress.runtime.metrics import cosine_per_sample
from onnx_compress.stats import op_histogram


@pytest.fixture(scope="module")
def minilm_model(minilm_onnx):
    return load_model(minilm_onnx)


def test_minilm_attention_gelu_and_layernorm_fuse_and_outputs_hold(minilm_model, minilm_texts):
    before = op_histogram(minilm_model)
    result = Fuse()(minilm_model)
    ops = op_histogram(result.model)
    assert result.modified
    # six encoder layers: one attention core, one GELU, two residual LayerNorms each
    assert ops["com.microsoft::MultiHeadAttention"] == 6
    assert ops["com.microsoft::BiasGelu"] == 6
    assert ops["com.microsoft::SkipLayerNormalization"] == 12
    # the Q/K/V/O and FFN projections stay MatMuls (36 = 6 x 6), so int8 can reach them
    assert ops["MatMul"] == 36 and "com.microsoft::Attention" not in ops
    assert "Softmax" not in ops and "Erf" not in ops
    assert result.nodes_after < result.nodes_before / 2
    assert result.fusions["skip_layer_normalization"] == 12 and result.fusions["sdpa"] == 6
    assert op_histogram(minilm_model) == before  # the input is not modified
    sample = minilm_texts["val"].take(16)
    expected = Runner(minilm_model).run_dataset(sample)["embedding"]
    got = Runner(result.model).run_dataset(sample)["embedding"]
    assert cosine_per_sample(expected, got).min() > 0.99999
    assert abs(expected - got).max() < 1e-4


def test_packed_attention_and_attention_off(minilm_model):
    packed = op_histogram(Fuse(attention="packed")(minilm_model).model)
    assert packed["com.microsoft::Attention"] == 6 and packed["MatMul"] == 18
    off = Fuse(attention="off", gelu=False)(minilm_model)
    ops = op_histogram(off.model)
    assert "com.microsoft::MultiHeadAttention" not in ops and "com.microsoft::BiasGelu" not in ops
    assert ops["Softmax"] == 6 and ops["com.microsoft::SkipLayerNormalization"] == 12


def test_a_cnn_has_nothing_to_fuse(torch_seed_onnx):
    model = load_model(torch_seed_onnx)
    result = Fuse()(model)
    assert not result.modified and result.summary() == "nothing to fuse"
    assert op_histogram(result.model) == op_histogram(model)


def test_bad_setting_names_the_choices():
    with pytest.raises(SettingError, match="mha, packed, off"):
        Fuse(attention="flash")
