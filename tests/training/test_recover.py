"""Recovery by distillation from the original model: it wins back what a hard cut lost, and bad
input fails with one line before training."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_compress.data import Dataset
from onnx_compress.errors import DataError, SettingError, TrainingError
from onnx_compress.model_io import load_model
from onnx_compress.runtime.session import Runner
from onnx_compress.training.recover import RecoverySettings, recover

from .conftest import top1


def test_recovery_wins_back_top1_of_a_hard_cut(pruned_torch_seed, torch_seed_onnx, small_splits):
    student = load_model(pruned_torch_seed)
    teacher = load_model(torch_seed_onnx)
    before_arrays = {n: np.array(v.const_value.numpy()) for n, v in student.graph.initializers.items()}
    start_test = top1(student, small_splits["test"])
    settings = RecoverySettings(epochs=5, lr=3e-3, batch_size=32, patience=5)
    model, result = recover(student, teacher, small_splits["train"].take(640), small_splits["val"], settings,
                            progress=False)
    assert result.improved and result.modified
    assert result.metric_name == "top1"
    assert result.after > result.before + 2.0, result.summary()
    assert [r.epoch for r in result.history][0] == 0 and len(result.history) == result.epochs_run + 1
    assert result.history[result.best_epoch].metric == result.after
    # held-out test top-1 follows the validation gain
    assert top1(model, small_splits["test"]) > start_test + 2.0
    assert result.parity < 1e-4
    # the same graph, the student untouched
    assert [n.op_type for n in model.graph] == [n.op_type for n in student.graph]
    for name, value in student.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), before_arrays[name])


def test_no_improvement_returns_the_input_with_both_numbers(torch_seed_onnx, small_splits):
    # the teacher as its own student: nothing to win back at a tiny learning rate
    teacher = load_model(torch_seed_onnx)
    settings = RecoverySettings(epochs=1, lr=1e-9, patience=1)
    model, result = recover(teacher, teacher, small_splits["train"].take(64), small_splits["val"].take(64),
                            settings, progress=False)
    if not result.improved:  # a 1e-9 step can still tie the metric and lower the loss by rounding
        assert model is teacher and not result.modified
        assert "did not improve" in result.summary() and f"{result.before:.4g}" in result.summary()


def test_bad_inputs_fail_before_training(pruned_torch_seed, torch_seed_onnx, small_splits):
    student, teacher = load_model(pruned_torch_seed), load_model(torch_seed_onnx)
    train, val = small_splits["train"].take(64), small_splits["val"].take(32)
    wrong_name = Dataset(inputs={"pixels": train.inputs["input"]})
    with pytest.raises(DataError, match="missing model input"):
        recover(student, teacher, wrong_name, val, progress=False)
    wrong_shape = Dataset(inputs={"input": train.inputs["input"][:, :, :20]})
    with pytest.raises(DataError, match="axis"):
        recover(student, teacher, wrong_shape, val, progress=False)
    with pytest.raises(DataError, match="validation data is the training data"):
        recover(student, teacher, train, train, progress=False)
    other = teacher.clone()
    other.graph.outputs[0].name = "scores"
    with pytest.raises(DataError, match="teacher has no output"):
        recover(student, other, train, val, progress=False)
    with pytest.raises(SettingError, match="epochs"):
        RecoverySettings(epochs=0)
    with pytest.raises(SettingError, match="loss"):
        RecoverySettings(loss="hinge")


def test_a_loss_that_turns_nan_stops_with_one_line(pruned_torch_seed, torch_seed_onnx, small_splits):
    student, teacher = load_model(pruned_torch_seed), load_model(torch_seed_onnx)
    train = small_splits["train"].take(64)
    poisoned = Dataset(inputs={"input": np.where(np.arange(64)[:, None, None, None] == 40, np.nan,
                                                 train.inputs["input"]).astype(np.float32)})
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step \d; lower the learning rate"):
        recover(student, teacher, poisoned, small_splits["val"].take(32),
                RecoverySettings(epochs=1, batch_size=32), progress=False)


def test_the_validation_loss_is_the_training_objective_with_its_label_term(pruned_torch_seed, torch_seed_onnx,
                                                                            small_splits):
    # with labels, early stopping compares epochs on the loss that is trained: at label_weight 1 the
    # validation loss of epoch 0 is the student's cross-entropy on the validation labels
    student = load_model(pruned_torch_seed)
    val = small_splits["val"].take(128)
    log_probs = Runner(student).run_dataset(val)["output"].astype(np.float64)  # the seed ends in log_softmax
    cross_entropy = float(-log_probs[np.arange(len(val)), val.labels].mean())
    _, result = recover(student, load_model(torch_seed_onnx), small_splits["train"].take(64), val,
                        RecoverySettings(epochs=1, label_weight=1.0), progress=False)
    assert result.history[0].val_loss == pytest.approx(cross_entropy, rel=1e-4)
    _, distilled = recover(student, load_model(torch_seed_onnx), small_splits["train"].take(64), val,
                           RecoverySettings(epochs=1, label_weight=0.0), progress=False)
    assert distilled.history[0].val_loss != pytest.approx(cross_entropy, rel=1e-2)
