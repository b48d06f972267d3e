"""Distillation into a Keras student: from an ONNX teacher exported from PyTorch, and from Keras."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from onnx_compress.training.distill.common import DistillHistory
from onnx_compress.training.distill.tensorflow import distill
from onnx_compress.training.narrow.tensorflow import narrow_student
from onnx_compress.training.distill.tensorflow import distillation_loss
from onnx_compress.data import Dataset
from onnx_compress.errors import DataError, SettingError, UnsupportedModelError  # noqa: E402

EPOCHS = 6


def _predict(model, data: Dataset) -> np.ndarray:
    return np.asarray(model.predict(data.inputs["input"], verbose=0)).argmax(1)


def _student(teacher, seed: int = 0):
    keras.utils.set_random_seed(seed)
    return narrow_student(teacher, 0.5)


@pytest.fixture(scope="module")
def keras_distilled(keras_seed, torch_seed_onnx, digits_nhwc) -> tuple[object, DistillHistory]:
    """Cross-framework: the PyTorch seed (NCHW, log_softmax) as ONNX teaches a half-width Keras student."""
    return distill(torch_seed_onnx, _student(keras_seed), digits_nhwc.train, epochs=EPOCHS, lr=2e-3,
                   teacher_inputs="NHWC->NCHW", val_data=digits_nhwc.val, progress=False)


def test_onnx_teacher_from_pytorch_teaches_a_keras_student(keras_distilled, torch_seed, digits_nchw, digits_nhwc):
    from onnx_compress.samples import seed_torch_cnn

    student, history = keras_distilled
    assert history.teacher_outputs == "log_probs" and history.student_outputs == "probs"
    assert len(history.loss) == EPOCHS and history.loss[-1] < 0.25 * history.loss[0]
    assert history.val_top1[-1] > 90
    teacher_pred = seed_torch_cnn.predict(torch_seed, digits_nchw.test)  # same images, NCHW
    agreement = (_predict(student, digits_nhwc.test) == teacher_pred).mean()
    assert agreement >= 0.95, agreement


def test_keras_teacher_object_and_file(keras_seed, keras_seed_file, digits_nhwc, caplog):
    small = digits_nhwc.train.take(192)
    for teacher in (keras_seed, keras_seed_file):
        with caplog.at_level(logging.DEBUG, logger="onnx_compress.training.distill.tensorflow"):
            student, history = distill(teacher, _student(keras_seed), small, epochs=2, progress=False)
        assert history.teacher_outputs == "probs" and history.student_outputs == "probs"
        assert history.label_loss is not None and history.val_metric is None
        assert history.device.endswith("CPU:0") or "GPU" in history.device
    # the softmax student is trained on the logits Keras attaches to its output, not on log(p)
    assert "using the logits Keras attached" in caplog.text and "without attached logits" not in caplog.text


def test_losses_match_the_pytorch_trainer():
    """Both frameworks compute the same loss from the same outputs."""
    import torch
    from onnx_compress.training.distill.common import soft_targets
    from onnx_compress.training.distill.torch import distillation_loss as torch_loss

    rng = np.random.default_rng(2)
    z_s = (rng.standard_normal((7, 10)) * 3).astype(np.float32)
    soft = soft_targets((rng.standard_normal((7, 10)) * 3).astype(np.float32), 2.5)
    labels = rng.integers(0, 10, 7)
    got = distillation_loss(z_s, soft, labels, temperature=2.5, alpha=0.4)
    want = torch_loss(torch.from_numpy(z_s), torch.from_numpy(soft), torch.from_numpy(labels), temperature=2.5,
                      alpha=0.4)
    for a, b in zip(got, want):
        assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_bad_inputs_are_refused_before_training(keras_seed, torch_seed_onnx, digits_nhwc):
    seven = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(7, activation="softmax")])
    before = [w.copy() for w in seven.get_weights()]
    with pytest.raises(SettingError, match="teacher has 10 outputs per sample, the student 7"):
        distill(keras_seed, seven, digits_nhwc.train, epochs=1, progress=False)
    with pytest.raises(SettingError, match="teacher has 10 outputs per sample, the student 7"):
        distill(torch_seed_onnx, seven, digits_nhwc.train, epochs=1, teacher_inputs="NHWC->NCHW", progress=False)
    with pytest.raises(DataError, match="no 'labels' array"):
        distill(keras_seed, seven, {"input": digits_nhwc.train.inputs["input"]}, epochs=1, progress=False)
    with pytest.raises(DataError, match="empty"):
        distill(keras_seed, seven, {"input": digits_nhwc.train.inputs["input"][:0]}, epochs=1, alpha=0.0,
                progress=False)
    with pytest.raises(DataError, match="teacher_inputs='NHWC->NCHW'"):
        distill(torch_seed_onnx, _student(keras_seed), digits_nhwc.train, epochs=1, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, seven.get_weights()))


def test_narrow_keras_seed_widths(keras_seed):
    student = _student(keras_seed)
    widths = [(type(layer).__name__, getattr(layer, "filters", None) or getattr(layer, "units", None))
              for layer in student.layers if hasattr(layer, "filters") or hasattr(layer, "units")]
    assert widths == [("Conv2D", 16), ("Conv2D", 32), ("Dense", 64), ("Dense", 10)]
    assert tuple(student.inputs[0].shape) == (None, 28, 28, 1)
    assert student.layers[-1].get_config()["activation"] == "softmax"
    assert student.count_params() < 0.3 * keras_seed.count_params()
    assert [w.shape for w in keras_seed.get_weights()][0] == (3, 3, 1, 32)  # the teacher is untouched


def test_narrow_keras_refuses_what_it_cannot_rebuild():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(4)(inputs)
    functional = keras.Model(inputs, keras.layers.Add()([hidden, keras.layers.Dense(4)(inputs)]))
    with pytest.raises(UnsupportedModelError, match="only keras.Sequential"):
        narrow_student(functional)
    recurrent = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(8), keras.layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match=r"'lstm.*' \(LSTM\) is not supported"):
        narrow_student(recurrent)
    separable = keras.Sequential([keras.Input((9, 9, 3)), keras.layers.SeparableConv2D(4, 3), keras.layers.Flatten(),
                                  keras.layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match="SeparableConv2D"):
        narrow_student(separable)
    with pytest.raises(UnsupportedModelError, match="not built"):
        narrow_student(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(SettingError, match="factor"):
        narrow_student(recurrent, 0)
