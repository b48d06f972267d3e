"""Keras export: .keras files and SavedModels, parity at two batch sizes, safe loading."""

from __future__ import annotations

import keras
import numpy as np
import onnx
import pytest

import onnx_compress as oc
from onnx_compress.errors import ExportError, ModelLoadError, UnsafeModelError
from onnx_compress.runtime import Runner, SessionSettings


@pytest.mark.parametrize("batch", [1, 7])
def test_seed_cnn_parity_at_batch(keras_seed, keras_seed_onnx, digits_nhwc, batch):
    x = digits_nhwc.test.take(batch).inputs["input"]
    expected = np.asarray(keras_seed(x, training=False))
    (got,) = Runner(keras_seed_onnx, SessionSettings(provider="cpu")).run({"input": x})
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_names_and_dynamic_batch_axis(keras_seed_onnx):
    proto = onnx.load(keras_seed_onnx)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.opset_import[0].version == 17


def test_model_object_export_with_names(keras_seed, tmp_path):
    result = oc.export_keras(keras_seed, tmp_path / "k.onnx", input_names=["image"], output_names=["probs"])
    assert result.input_names == ["image"] and result.output_names == ["probs"]
    assert {c.batch for c in result.parity} == {2, 3}
    assert result.max_abs_error < 1e-4


def test_saved_model_directory(keras_seed, digits_nhwc, tmp_path):
    saved = tmp_path / "saved"
    keras_seed.export(str(saved), verbose=False)
    result = oc.export_keras(saved, tmp_path / "sm.onnx")
    name = result.input_names[0]
    x = digits_nhwc.test.take(7).inputs["input"]
    (got,) = Runner(tmp_path / "sm.onnx", SessionSettings(provider="cpu")).run({name: x})
    np.testing.assert_allclose(got, np.asarray(keras_seed(x, training=False)), atol=1e-5)


def _lambda_model_file(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(3)(inputs))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def test_lambda_layer_refused_by_default_and_allowed_when_unsafe(tmp_path):
    path = _lambda_model_file(tmp_path)
    with pytest.raises(UnsafeModelError, match="--unsafe-load"):
        oc.export_keras(path, tmp_path / "l.onnx")
    assert not (tmp_path / "l.onnx").exists()
    result = oc.export_keras(path, tmp_path / "l.onnx", unsafe_load=True)
    assert result.max_abs_error < 1e-4


def test_missing_and_wrong_sources(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        oc.export_keras(tmp_path / "nope.keras", tmp_path / "o.onnx")
    (tmp_path / "junk.keras").write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match="could not load"):
        oc.export_keras(tmp_path / "junk.keras", tmp_path / "o.onnx")
    with pytest.raises(ModelLoadError, match="SavedModel"):
        oc.export_keras(tmp_path, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_an_op_tf2onnx_cannot_convert_is_named_before_onnx_runtime_sees_the_model(tmp_path):
    """Keras 3's exact GELU exports as Erfc, which tf2onnx leaves unconverted: the error names it
    and the fix, and nothing is written."""
    inputs = keras.Input((8,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(4, activation="gelu", name="ffn")(inputs))
    out = tmp_path / "gelu.onnx"
    with pytest.raises(ExportError, match=r"Erfc \(1 node, e\.g\. .*approximate=True"):
        oc.export_keras(model, out)
    assert not out.exists()
