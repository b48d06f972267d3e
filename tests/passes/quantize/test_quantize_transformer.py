"""Dynamic int8 on a real transformer block (torch's TransformerEncoderLayer exported to ONNX), and
the pretrained all-MiniLM-L6-v2 reaching the issue's targets (slow)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnx_compress.model_io import load_model
from onnx_compress.passes import Quantize
from onnx_compress.runtime import Runner
from onnx_compress.runtime.metrics import cosine_per_sample


@pytest.fixture(scope="module")
def block_onnx(artifacts):
    import torch

    import onnx_compress as oc

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=256, batch_first=True,
                                             dropout=0.0).eval()
    path = artifacts / "transformer_block.onnx"
    oc.export_torch(layer, torch.randn(2, 16, 64), path)
    return path


def _inputs(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((count, 16, 64)).astype(np.float32)}


def test_dynamic_int8_on_a_transformer_block(block_onnx):
    model = load_model(block_onnx)
    val = _inputs(32, seed=1)
    result = Quantize(mode="dynamic", validation=val, metric="cosine", guard="warn", exclude=("node_MatMul_90",))(model)
    assert result.modified and result.mode == "dynamic"
    # the three other weight MatMul/Gemm are int8; the one named in exclude stays float
    assert sorted(result.quantized) == ["node_Gemm_116", "node_MatMul_3", "node_MatMul_88"]
    ops = {node.op_type for node in result.model.graph}
    assert "DynamicQuantizeLinear" in ops or "DynamicQuantizeMatMul" in ops
    assert "MatMulInteger" in ops
    kept = next(node for node in result.model.graph if node.name == "node_MatMul_90")
    assert kept.op_type == "MatMul" and kept.inputs[1].const_value.dtype == ir.DataType.FLOAT
    # transformer-like: the transformer optimizer ran first, checked for output parity
    prep = [c for c in result.choices if c.setting == "preprocess"]
    assert prep and prep[-1].value == "transformer", prep[-1].reason
    test = _inputs(16, seed=2)
    expected = Runner(model).run(test)[0]
    got = Runner(result.model).run(test)[0]
    cos = cosine_per_sample(expected.reshape(-1, 64), got.reshape(-1, 64))
    assert cos.mean() > 0.995 and cos.min() > 0.98, (cos.mean(), cos.min())
    # 49,152 weights: the 32,768 quantized ones shrink 4x, the excluded 256x64 FF weight stays float
    assert result.weight_bytes_before - result.weight_bytes_after >= 0.7 * 32768 * 4
    assert result.size_ratio > 1.5
    assert result.accuracy["metric"] == "cosine" and result.accuracy["drop"] < 0.005


@pytest.mark.slow
def test_minilm_dynamic_with_auto_exclusion_reaches_the_targets(minilm_onnx, minilm_texts):
    """all-MiniLM-L6-v2: mean cosine >= 0.995 and min >= 0.985 on held-out sentences (the issue's
    accuracy targets; ONNX Runtime's default dynamic quantization gives 0.962 / 0.910 here)."""
    from onnx_compress.samples import minilm

    model = load_model(minilm_onnx)
    result = Quantize(mode="auto", calibration=minilm_texts["calib"], validation=minilm_texts["val"],
                      metric="cosine", max_drop=0.004, threads=2, guard="warn")(model)
    assert result.modified and result.mode == "dynamic"
    assert any(c.setting == "preprocess" and c.value == "transformer" for c in result.choices)
    test = minilm.text_dataset(minilm.sentences(600)[400:600], sequence=64)
    expected = Runner(model).run_dataset(test)["embedding"]
    got = Runner(result.model).run_dataset(test)["embedding"]
    cos = cosine_per_sample(expected, got)
    assert cos.mean() >= 0.995 and cos.min() >= 0.985, (cos.mean(), cos.min())
    # smoothing (strength chosen on the validation sentences) lets every MatMul be int8: measured
    # 0.9976 / 0.9925 with all 36 quantized, where plain int8 needed six kept float
    smooth = next(c for c in result.choices if c.setting == "smooth")
    assert isinstance(smooth.value, float) and 0.0 < smooth.value < 1.0
    assert result.quantized_op_types.get("MatMul") == 36
    assert result.size_ratio >= 3.8
    assert all(node.reason == "too small" for node in result.excluded)


def test_fp16_keeps_the_fused_skip_layernorm_for_gpus(block_onnx):
    """The residual-norm form is timed on this CPU only for CPU modes; fp16 (a GPU mode) keeps
    ONNX Runtime's fused SkipLayerNormalization."""
    result = Quantize(mode="fp16", guard="off")(load_model(block_onnx))
    assert result.modified
    prep = next(c for c in result.choices if c.setting == "preprocess")
    assert prep.value == "transformer" and "residual norms fused (as set)" in prep.reason
    ops = {node.op_type for node in result.model.graph}
    assert "Sum" not in ops
    dynamic = Quantize(mode="dynamic", guard="off")(load_model(block_onnx))
    prep = next(c for c in dynamic.choices if c.setting == "preprocess")
    assert "measured on this CPU" in prep.reason or "no residual Add" in prep.reason


def _real_token_cosine(reference, candidate, data) -> np.ndarray:
    """Cosine per real token of ``last_hidden_state`` (padded positions left out)."""
    real = data.inputs["attention_mask"].astype(bool)
    expected = Runner(reference).run_dataset(data)["last_hidden_state"]
    got = Runner(candidate).run_dataset(data)["last_hidden_state"]
    return cosine_per_sample(expected[real], got[real])


def test_keras_encoder_dynamic_int8_runs_on_the_fused_graph(keras_encoder_onnx, keras_encoder_data):
    """A Keras/tf2onnx encoder (LayerNorm as GlobalAveragePool moments) is recognised as a
    transformer, fused (attention, Gelu) before dynamic int8, every projection int8 (Q/K/V inside
    one QAttention per layer: its mask bias is proven to be the padding mask)."""
    from onnx_compress.samples import keras_encoder

    from onnx_compress.passes import Normalize
    from onnx_compress.stats import op_histogram

    model = Normalize()(load_model(keras_encoder_onnx)).model
    result = Quantize(mode="auto", calibration=keras_encoder_data["calib"], validation=keras_encoder_data["val"],
                      metric="cosine", max_drop=0.01, threads=2, guard="warn")(model)
    assert result.modified and result.mode == "dynamic"
    mode = next(c for c in result.choices if c.setting == "mode")
    assert "query x key" in mode.reason  # recognised by its attention, not by a LayerNormalization op
    ops = op_histogram(result.model)
    assert ops["com.microsoft::QAttention"] == 2 and ops["com.microsoft::Gelu"] == 2
    assert ops["NonZero"] == 1  # per-token layers on real tokens only (skip_padding, on by default)
    assert result.quantized_op_types.get("MatMul") == 12 and ops.get("MatMulInteger", 0) == 6
    assert result.accuracy["details"]["tokens"] == int(keras_encoder_data["val"].inputs["attention_mask"].sum())
    test = keras_encoder.token_dataset(100, seed=3)
    cos = _real_token_cosine(model, result.model, test)
    assert cos.mean() >= 0.999 and cos.min() >= 0.99, (cos.mean(), cos.min())
    assert result.size_ratio > 2.5


@pytest.mark.slow
def test_torchscript_minilm_dynamic_int8_on_the_fused_graph(minilm_ts_onnx, minilm_texts):
    """The TorchScript MiniLM (last_hidden_state) gets the same fused dynamic int8 as the dynamo
    export: six QAttention (Q/K/V packed, the exporter's mask bias proven the padding mask), all 36
    projections int8, mean cosine >= 0.99 on real tokens."""
    from onnx_compress.samples import minilm

    from onnx_compress.passes import Normalize
    from onnx_compress.stats import op_histogram

    model = Normalize()(load_model(minilm_ts_onnx)).model
    result = Quantize(mode="auto", calibration=minilm_texts["calib"], validation=minilm_texts["val"],
                      metric="cosine", max_drop=0.01, threads=2, guard="warn")(model)
    assert result.modified and result.mode == "dynamic"
    ops = op_histogram(result.model)
    assert ops["com.microsoft::QAttention"] == 6 and "com.microsoft::MultiHeadAttention" not in ops
    assert next(c for c in result.choices if c.setting == "skip_padding").value == "on (attention_mask)"
    assert result.quantized_op_types.get("MatMul") == 36
    assert "real tokens" in result.accuracy["scope"]
    test = minilm.text_dataset(minilm.sentences(600)[400:600], sequence=64)
    cos = _real_token_cosine(model, result.model, test)
    assert cos.mean() >= 0.99, (cos.mean(), cos.min())
    assert result.size_ratio >= 3.5
