"""Distillation into a PyTorch student: from the PyTorch seed, and from an ONNX teacher exported from Keras."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from onnx_compress.training.distill.common import DistillHistory
from onnx_compress.training.distill.torch import distill
from onnx_compress.training.narrow.torch import narrow_student
from onnx_compress.training.distill.torch import distillation_loss
from onnx_compress.data import Dataset
from onnx_compress.errors import DataError, SettingError
from onnx_compress.model_io import load_model

EPOCHS = 12


def _predict(model: nn.Module, data: Dataset) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(data.inputs["input"])).argmax(1).numpy()


def _student(teacher: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return narrow_student(teacher, 0.5)


@pytest.fixture(scope="module")
def distilled(torch_seed, digits_nchw) -> tuple[nn.Module, DistillHistory]:
    """A half-width student distilled from the trained seed CNN (PyTorch teacher)."""
    return distill(torch_seed, _student(torch_seed), digits_nchw.train, epochs=EPOCHS, temperature=4.0,
                   alpha=0.5, lr=2e-3, batch_size=64, val_data=digits_nchw.val, progress=False)


def test_loss_falls_and_history_is_complete(distilled):
    _, history = distilled
    assert len(history.loss) == len(history.distill_loss) == len(history.label_loss) == EPOCHS
    assert history.loss[-1] < 0.25 * history.loss[0]
    assert history.distill_loss[-1] < history.distill_loss[0] and history.label_loss[-1] < history.label_loss[0]
    # the total is exactly the weighted sum of its parts
    np.testing.assert_allclose(history.loss, 0.5 * np.array(history.distill_loss) + 0.5 * np.array(history.label_loss),
                               rtol=1e-5)
    assert history.teacher_outputs == "log_probs" and history.student_outputs == "log_probs"
    assert history.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert history.val_metric_name == "top1" and len(history.val_metric) == EPOCHS
    assert history.val_agreement[-1] > history.val_agreement[0] - 1e-9
    assert history.teacher_val_top1 > 95
    assert history.as_dict()["settings"]["epochs"] == EPOCHS


def test_distilled_student_agrees_with_the_teacher_on_the_test_set(distilled, torch_seed, digits_nchw):
    student, _ = distilled
    assert not student.training
    assert sum(p.numel() for p in student.parameters()) < 0.3 * sum(p.numel() for p in torch_seed.parameters())
    agreement = (_predict(student, digits_nchw.test) == _predict(torch_seed, digits_nchw.test)).mean()
    assert agreement >= 0.95, agreement


def test_loss_formula():
    """L = (1 - alpha) * T^2 * KL(p_t || p_s) + alpha * CE, checked against numpy."""
    rng = np.random.default_rng(1)
    z_s, z_t = rng.standard_normal((6, 5)) * 3, rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    t, alpha = 3.0, 0.3

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    p_t = np.exp(log_softmax(z_t / t))
    kl = (p_t * (np.log(p_t) - log_softmax(z_s / t))).sum(1).mean()
    ce = -log_softmax(z_s)[np.arange(6), labels].mean()
    total, kd, got_ce = distillation_loss(torch.tensor(z_s), torch.tensor(log_softmax(z_t / t)),
                                          torch.tensor(labels), temperature=t, alpha=alpha)
    assert kd.item() == pytest.approx(t * t * kl, rel=1e-9)
    assert got_ce.item() == pytest.approx(ce, rel=1e-9)
    assert total.item() == pytest.approx((1 - alpha) * t * t * kl + alpha * ce, rel=1e-9)


def test_onnx_teacher_exported_from_keras_teaches_a_torch_student(keras_seed_onnx, keras_seed, digits_nchw, digits_nhwc):
    """Cross-framework: the Keras seed (NHWC input, softmax output) as ONNX, an NCHW PyTorch student."""
    from onnx_compress.samples import seed_keras_cnn

    torch.manual_seed(0)
    student = narrow_student(_seed_architecture(), 0.5)
    with pytest.raises(DataError, match="teacher_inputs='NCHW->NHWC'"):
        distill(keras_seed_onnx, student, digits_nchw.train, epochs=1, progress=False)
    student, history = distill(keras_seed_onnx, student, digits_nchw.train, epochs=5, lr=2e-3,
                               teacher_inputs="NCHW->NHWC", val_data=digits_nchw.val, progress=False)
    assert history.teacher_outputs == "probs"  # the Keras softmax, detected and taken to log space
    assert history.loss[-1] < 0.5 * history.loss[0]
    keras_pred = seed_keras_cnn.predict(keras_seed, digits_nhwc.test)
    agreement = (_predict(student, digits_nchw.test) == keras_pred).mean()
    assert agreement >= 0.9, agreement


def _seed_architecture() -> nn.Module:
    from onnx_compress.samples import seed_torch_cnn

    return seed_torch_cnn.SimpleModel()


def test_onnx_teacher_without_labels_and_progress_bar(torch_seed_onnx, torch_seed, digits_nchw, capfd):
    """alpha=0 needs no labels; the ONNX export of the log_softmax seed is detected as log-probs."""
    unlabeled = Dataset({"input": digits_nchw.train.inputs["input"][:128]})
    student = _student(torch_seed)
    teacher = load_model(torch_seed_onnx)  # an onnx_ir.Model works as well as a path
    _, history = distill(teacher, student, unlabeled, epochs=2, alpha=0.0, device="cpu",
                         val_data={"input": digits_nchw.val.inputs["input"]})
    assert history.teacher_outputs == "log_probs" and history.label_loss is None
    assert history.val_top1 is None and history.val_metric_name == "agreement"
    assert history.loss == history.distill_loss and history.device == "cpu"
    err = capfd.readouterr().err
    assert "distill epoch 1/2" in err and "distill epoch 2/2" in err and "loss=" in err and "val_agree=" in err


def _weights(module: nn.Module) -> list[np.ndarray]:
    return [p.detach().clone().numpy() for p in module.parameters()]


def _unchanged(before: list[np.ndarray], module: nn.Module) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(before, _weights(module)))


def test_bad_inputs_are_refused_before_training(torch_seed, torch_seed_onnx, digits_nchw):
    train = digits_nchw.train
    seven = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 7), nn.LogSoftmax(dim=1))
    before = _weights(seven)
    with pytest.raises(SettingError, match="teacher has 10 outputs per sample, the student 7"):
        distill(torch_seed, seven, train, epochs=1, progress=False)
    with pytest.raises(SettingError, match="teacher has 10 outputs per sample, the student 7"):
        distill(torch_seed_onnx, seven, train, epochs=1, progress=False)
    assert _unchanged(before, seven)

    student = _student(torch_seed)
    before = _weights(student)
    with pytest.raises(DataError, match="no 'labels' array"):
        distill(torch_seed, student, {"input": train.inputs["input"]}, epochs=1, alpha=0.5, progress=False)
    with pytest.raises(DataError, match="empty"):
        distill(torch_seed, student, {"input": train.inputs["input"][:0]}, epochs=1, alpha=0.0, progress=False)
    with pytest.raises(DataError, match=r"labels range over \[0, 12\].*10 outputs"):
        distill(torch_seed, student, {"input": train.inputs["input"][:4], "labels": np.array([0, 1, 2, 12])},
                epochs=1, progress=False)
    with pytest.raises(SettingError, match="student failed on the training data"):
        distill(torch_seed, student, {"input": np.zeros((4, 3, 28, 28), np.float32)}, epochs=1, alpha=0.0,
                progress=False)
    with pytest.raises(SettingError, match="alpha"):
        distill(torch_seed, student, train, epochs=1, alpha=2.0, progress=False)
    with pytest.raises(SettingError, match="device"):
        distill(torch_seed, student, train, epochs=1, device="tpu", progress=False)
    with pytest.raises(SettingError, match="teacher must be"):
        distill(object(), student, train, epochs=1, progress=False)
    assert _unchanged(before, student)
