"""The seed samples: trained on real digits, ONNX Runtime accuracy equals the framework's."""

from __future__ import annotations

import numpy as np

from onnx_compress.runtime import Runner, SessionSettings


def test_torch_seed_onnx_accuracy_equals_pytorch(torch_seed, torch_seed_onnx, digits_nchw):
    from onnx_compress.samples import seed_torch_cnn

    torch_pred = seed_torch_cnn.predict(torch_seed, digits_nchw.test)
    onnx_pred = Runner(torch_seed_onnx, SessionSettings(provider="cpu")).run_dataset(digits_nchw.test)["output"].argmax(1)
    np.testing.assert_array_equal(onnx_pred, torch_pred)
    assert (onnx_pred == digits_nchw.test.labels).mean() > 0.95


def test_keras_seed_onnx_accuracy_equals_keras(keras_seed, keras_seed_onnx, digits_nhwc):
    from onnx_compress.samples import seed_keras_cnn

    keras_pred = seed_keras_cnn.predict(keras_seed, digits_nhwc.test)
    onnx_pred = Runner(keras_seed_onnx, SessionSettings(provider="cpu")).run_dataset(digits_nhwc.test)["output"].argmax(1)
    np.testing.assert_array_equal(onnx_pred, keras_pred)
    assert (onnx_pred == digits_nhwc.test.labels).mean() > 0.95


def test_minilm_export_matches_pytorch_at_another_sequence_length(minilm_onnx):
    from onnx_compress.samples import minilm
    import torch

    data = minilm.text_dataset(minilm.sentences(12)[4:], sequence=32)  # exported at 64: dynamic axis
    with torch.no_grad():
        expected = minilm.load_embedder()(*(torch.from_numpy(data.inputs[k]) for k in ("input_ids", "attention_mask")))
    got = Runner(minilm_onnx, SessionSettings(provider="cpu")).run_dataset(data)["embedding"]
    assert got.shape == (8, 384)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_minilm_torchscript_export_is_the_per_token_encoder(minilm_ts_onnx, minilm_texts):
    import onnx

    model = onnx.load(minilm_ts_onnx)
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    assert {i.name for i in model.graph.input} == {"input_ids", "attention_mask"}
    assert model.opset_import[0].version == 17
    assert not any(n.op_type == "MultiHeadAttention" for n in model.graph.node)  # the exporter's own pattern
    hidden = Runner(minilm_ts_onnx, SessionSettings(provider="cpu")).run_dataset(minilm_texts["val"].take(4))
    assert hidden["last_hidden_state"].shape == (4, 64, 384)


def test_keras_encoder_exports_through_tf2onnx_with_parity(keras_encoder_onnx, keras_encoder_data):
    import onnx

    model = onnx.load(keras_encoder_onnx)
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMul", "Softmax", "Erf"} <= ops  # attention and the erf GELU, as tf2onnx wrote them
    hidden = Runner(keras_encoder_onnx, SessionSettings(provider="cpu")).run_dataset(keras_encoder_data["val"].take(5))
    assert hidden["last_hidden_state"].shape == (5, 32, 64)
    assert np.isfinite(hidden["last_hidden_state"]).all()
