"""The framework-free part of distillation: output kinds, teacher inputs, settings, data checks."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_compress.training.distill.common import (
    DistillSettings,
    detect_output_kind,
    log_softmax,
    prepare_data,
    resolve_output_kind,
    soft_targets,
    teacher_feeds,
    to_log_space,
)
from onnx_compress.data import Dataset
from onnx_compress.errors import DataError, SettingError

RNG = np.random.default_rng(0)
LOGITS = (RNG.standard_normal((50, 10)) * 4).astype(np.float32)


def test_output_kinds_are_detected_from_the_values():
    log_probs = log_softmax(LOGITS).astype(np.float32)
    probs = np.exp(log_probs)
    assert detect_output_kind(LOGITS) == "logits"
    assert detect_output_kind(log_probs) == "log_probs"
    assert detect_output_kind(probs) == "probs"
    one_hot = np.eye(10, dtype=np.float32)[RNG.integers(0, 10, 20)]  # saturated softmax: exact zeros
    assert detect_output_kind(one_hot) == "probs"
    assert detect_output_kind(np.abs(LOGITS)) == "logits"  # non-negative, but rows do not sum to 1
    assert detect_output_kind(-np.abs(LOGITS)) == "logits"  # non-positive, but not normalized


def test_every_kind_gives_the_same_soft_targets():
    """softmax((z - c) / T) = softmax(z / T): logits, log-probs and probs agree once in log space."""
    log_probs = log_softmax(LOGITS).astype(np.float32)
    probs = np.exp(log_probs)
    reference = soft_targets(LOGITS, 4.0)
    np.testing.assert_allclose(soft_targets(to_log_space(log_probs, "log_probs"), 4.0), reference, atol=1e-5)
    np.testing.assert_allclose(soft_targets(to_log_space(probs, "probs"), 4.0), reference, atol=1e-4)
    # treating probabilities as logits would be wrong: nearly uniform soft targets
    wrong = np.exp(soft_targets(probs, 4.0))
    assert np.abs(wrong - 0.1).max() < 0.03 and np.abs(np.exp(reference) - 0.1).max() > 0.3


def test_probabilities_that_underflowed_stay_finite():
    z = to_log_space(np.eye(3, dtype=np.float32), "probs")
    assert np.isfinite(z).all() and z.min() < -80


def test_declared_kinds_are_checked_against_the_outputs():
    assert resolve_output_kind(LOGITS, "logits", who="teacher") == "logits"
    with pytest.raises(SettingError, match="teacher_outputs='probs'"):
        resolve_output_kind(LOGITS, "probs", who="teacher")
    with pytest.raises(SettingError, match="student_outputs='log_probs'"):
        resolve_output_kind(np.abs(LOGITS), "log_probs", who="student")


def test_teacher_inputs_layout_and_callable():
    batch = {"input": np.arange(2 * 1 * 4 * 3, dtype=np.float32).reshape(2, 1, 4, 3)}
    nhwc = teacher_feeds("NCHW->NHWC")(batch)["input"]
    assert nhwc.shape == (2, 4, 3, 1) and nhwc.flags.c_contiguous
    np.testing.assert_array_equal(nhwc, batch["input"].transpose(0, 2, 3, 1))
    back = teacher_feeds("nhwc -> nchw")({"input": nhwc})["input"]
    np.testing.assert_array_equal(back, batch["input"])
    renamed = teacher_feeds(lambda b: {"pixels": b["input"] * 2})(batch)
    assert list(renamed) == ["pixels"]
    assert teacher_feeds(None)(batch)["input"] is batch["input"]
    for bad in ("NCHW", "NCHW->NHW", "NCCW->NWCC", "NCHW->NHWX"):
        with pytest.raises(SettingError, match="teacher_inputs"):
            teacher_feeds(bad)
    with pytest.raises(SettingError, match="rank-4"):
        teacher_feeds("NCHW->NHWC")({"input": np.zeros((2, 5), np.float32)})
    with pytest.raises(SettingError, match="teacher_inputs"):
        teacher_feeds(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("epochs", 2.5), ("temperature", 0.0), ("temperature", float("nan")), ("alpha", 1.5),
     ("alpha", -0.1), ("lr", -1e-3), ("batch_size", 0), ("teacher_outputs", "softmax"), ("student_outputs", "x")],
)
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(SettingError, match=field):
        DistillSettings(**{field: value})


def test_data_checks_before_training():
    images = np.zeros((8, 1, 28, 28), np.float32)
    with pytest.raises(DataError, match="train_data.*empty"):
        prepare_data({"input": images[:0], "labels": np.zeros(0, np.int64)}, None, alpha=0.5)
    with pytest.raises(DataError, match="train_data.*no batches"):
        prepare_data([], None, alpha=0.5)
    with pytest.raises(DataError, match="no 'labels' array.*alpha=0.5.*alpha=0"):
        prepare_data({"input": images}, None, alpha=0.5)
    train, val = prepare_data({"input": images}, None, alpha=0.0)  # pure distillation needs no labels
    assert len(train) == 8 and val is None
    with pytest.raises(DataError, match="val_data"):
        prepare_data({"input": images}, {"pixels": images}, alpha=0.0)
    with pytest.raises(DataError, match="val_data array 'input'"):
        prepare_data({"input": images}, {"input": np.zeros((8, 28, 28, 1), np.float32)}, alpha=0.0)
    train, val = prepare_data(Dataset({"input": images}), {"input": images}, alpha=0.0)
    assert val is not None and val.labels is None


def test_layout_hint_only_when_a_transposition_fits():
    from onnx_compress.training.distill.common import layout_hint
    from onnx_compress.data import InputSpec

    nhwc = [InputSpec("input", np.dtype("float32"), ("batch", 28, 28, 1))]
    assert "teacher_inputs='NCHW->NHWC'" in layout_hint(nhwc, {"x": np.zeros((2, 1, 28, 28), np.float32)})
    assert layout_hint(nhwc, {"x": np.zeros((2, 28, 28, 1), np.float64)}) == ""  # fits already: a dtype problem
    assert layout_hint(nhwc, {"x": np.zeros((2, 3, 28, 28), np.float32)}) == ""  # no layout makes it fit
    nchw = [InputSpec("input", np.dtype("float32"), ("batch", 1, 28, 28))]
    assert "teacher_inputs='NHWC->NCHW'" in layout_hint(nchw, {"input": np.zeros((2, 28, 28, 1), np.float32)})


def test_summary_table_compares_teacher_and_student(torch_seed_onnx, tmp_path):
    """What `onnx-compress distill` prints after the epochs: the run and the two models side by side."""
    from onnx_compress.model_io import load_model, save_model
    from onnx_compress.passes import PruneStructured
    from onnx_compress.stats import model_stats
    from onnx_compress.training.distill.common import DistillSettings, new_history

    student_path = tmp_path / "student.onnx"
    save_model(PruneStructured(ratio=0.5)(load_model(torch_seed_onnx)).model, student_path)
    teacher, student = model_stats(torch_seed_onnx), model_stats(student_path)
    history = new_history(DistillSettings(), teacher_kind="logits", student_kind="log_probs", device="cpu",
                          has_labels=True, val=None, teacher_val_top1=97.5)
    rows = dict(line.split("  ", 1) for line in history.summary_table(teacher, student, 3e-6, student_path)
                .splitlines()[2:])
    assert rows["teacher outputs / student outputs"].strip() == "logits / log_probs"
    assert rows["teacher val top-1 (%)"].strip() == "97.50"
    assert rows["params teacher -> student"].strip() == "225.03k -> " + f"{student.params / 1e3:.2f}k"
    assert student.params < teacher.params and rows["wrote"].strip() == str(student_path)
    assert rows["export parity (max abs error)"].strip() == "3e-06"
