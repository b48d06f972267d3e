"""Transformer fusions on the real all-MiniLM-L6-v2 export: what fuses, that outputs do not move,
that int8 quantization still reaches the projections, and that a CNN comes back unchanged."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
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
    result = Fuse(layer_norm="fused")(minilm_model)
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
    assert result.layer_norm == "fused" and result.layer_norm_reason == "as set"
    assert op_histogram(minilm_model) == before  # the input is not modified
    sample = minilm_texts["val"].take(16)
    expected = Runner(minilm_model).run_dataset(sample)["embedding"]
    got = Runner(result.model).run_dataset(sample)["embedding"]
    assert cosine_per_sample(expected, got).min() > 0.99999
    assert abs(expected - got).max() < 1e-4


def test_unfused_residual_norms_are_sums_that_onnx_runtime_leaves_alone(minilm_model, minilm_texts):
    import onnxruntime as ort

    from onnx_compress.model_io import save_model

    result = Fuse(layer_norm="unfused")(minilm_model)
    ops = op_histogram(result.model)
    # 12 residual Adds + the embeddings' sum, each the only input of a LayerNormalization
    assert ops["Sum"] == 13 and ops["LayerNormalization"] == 13 and result.fusions["residual_sum"] == 13
    assert "com.microsoft::SkipLayerNormalization" not in ops
    assert ops["com.microsoft::MultiHeadAttention"] == 6
    sample = minilm_texts["val"].take(8)
    expected = Runner(minilm_model).run_dataset(sample)["embedding"]
    got = Runner(result.model).run_dataset(sample)["embedding"]
    assert abs(expected - got).max() < 1e-4
    # ONNX Runtime's own optimizer does not fuse them back (it does fuse Add + LayerNormalization)
    options = ort.SessionOptions()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "unfused.onnx"
        save_model(result.model, source)
        optimized = Path(folder) / "optimized.onnx"
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        kinds = {node.op_type for node in onnx.load(str(optimized), load_external_data=False).graph.node}
    assert "SkipLayerNormalization" not in kinds and "LayerNormalization" in kinds


def test_auto_layer_norm_times_both_forms_on_this_cpu(minilm_model):
    from onnx_compress.passes.fuse.residual_norm import measure

    timing = measure(384, rows=128, threads=1, runs=20)
    assert timing.width == 384 and timing.fused_ms > 0 and timing.unfused_ms > 0
    result = Fuse(threads=1)(minilm_model)
    assert result.layer_norm in ("fused", "unfused")
    assert "SkipLayerNormalization" in result.layer_norm_reason and "ms" in result.layer_norm_reason
    sums = op_histogram(result.model).get("Sum", 0)
    assert sums == (13 if result.layer_norm == "unfused" else 0)


def test_packed_attention_and_attention_off(minilm_model):
    packed = op_histogram(Fuse(attention="packed", layer_norm="fused")(minilm_model).model)
    assert packed["com.microsoft::Attention"] == 6 and packed["MatMul"] == 18
    off = Fuse(attention="off", gelu=False, layer_norm="fused")(minilm_model)
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
    with pytest.raises(SettingError, match="auto, fused, unfused, off"):
        Fuse(layer_norm=True)


def _real_token_error(reference, candidate, data) -> float:
    """Largest absolute difference of ``last_hidden_state`` over the real tokens of ``data``."""
    real = data.inputs["attention_mask"].astype(bool)
    expected = Runner(reference).run_dataset(data)["last_hidden_state"]
    got = Runner(candidate).run_dataset(data)["last_hidden_state"]
    return float(abs(expected[real] - got[real]).max())


def test_torchscript_minilm_fuses_like_the_dynamo_export(minilm_ts_onnx, minilm_texts):
    """The TorchScript exporter computes every head-split Reshape target at run time and writes
    the attention as Mul-scaled Q and K^T, an additive Where mask, Softmax and a Where(IsNaN)
    guard, with Linear biases first in their Add: after the symbolic-shape step and our
    normalization rules, onnxscript's rules fuse all six layers."""
    from onnx_compress.passes import Normalize

    model = Normalize()(load_model(minilm_ts_onnx)).model
    result = Fuse(layer_norm="fused")(model)
    ops = op_histogram(result.model)
    assert result.fusions["reshape_targets"] >= 24  # Q/K/V splits and the head merge, per layer
    assert ops["com.microsoft::MultiHeadAttention"] == 6
    assert ops["com.microsoft::BiasGelu"] == 6
    assert ops["com.microsoft::SkipLayerNormalization"] == 12
    assert ops["MatMul"] == 36 and "Softmax" not in ops and "IsNaN" not in ops
    assert result.fusions["mha_bias"] == 6  # Q/K/V biases folded in (bias-first Adds normalized)
    assert _real_token_error(model, result.model, minilm_texts["val"].take(8)) < 1e-4


def test_keras_encoder_attention_layer_norms_and_gelu_fuse(keras_encoder_onnx, keras_encoder_data):
    """tf2onnx writes Keras' MultiHeadAttention as einsums decomposed into 5-D Unsqueeze/Transpose
    and batched 3-D MatMuls (targets computed with ReduceProd), LayerNormalization as
    GlobalAveragePool moments and erf-GELU with a 1/sqrt(2) multiplication: all become ONNX
    Runtime's fused ops, outputs unchanged on the real tokens."""
    from onnx_compress.passes import Normalize

    model = Normalize()(load_model(keras_encoder_onnx)).model
    assert "LayerNormalization" not in op_histogram(model)
    result = Fuse(layer_norm="fused")(model)
    ops = op_histogram(result.model)
    assert result.fusions["layer_norm_and_gelu_forms"] == 7  # 5 norms (embeddings + 2 per layer), 2 GELUs
    assert result.fusions["einsum_attention"] == 2
    assert ops["com.microsoft::MultiHeadAttention"] == 2 and "Softmax" not in ops
    assert ops["MatMul"] == 12  # Q/K/V/O and the two FFN projections per layer stay quantizable
    assert ops["com.microsoft::Gelu"] == 2
    assert ops["com.microsoft::SkipLayerNormalization"] == 5
    assert "GlobalAveragePool" not in ops and "Erf" not in ops
    assert _real_token_error(model, result.model, keras_encoder_data["val"].take(32)) < 1e-4


def test_a_head_cut_dynamo_minilm_still_fuses_its_attention(minilm_onnx, minilm_texts, tmp_path, monkeypatch):
    """The dynamo export ends in a sentence pooling ONNX Runtime's symbolic shape inference cannot infer
    (Clip without max after ReduceL2); after a head cut the exporter's shapes are gone, so the fusions
    need the shapes that inference found before that node. Before: no attention fused, and the int8
    model of the cut ran at 0.7x the uncut int8 model's speed."""
    from onnx_compress.passes import Normalize
    from onnx_compress.passes.prune.transformer import PruneTransformer

    monkeypatch.chdir(tmp_path)
    model = Normalize()(load_model(minilm_onnx)).model
    cut = PruneTransformer(heads=0.25, calibration=minilm_texts["calib"].take(32))(model).model
    summary = Fuse()(Normalize()(cut).model).summary()
    assert "sdpa 6" in summary and "mha2 6" in summary, summary
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory
