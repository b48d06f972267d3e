"""Fidelity metrics on hand-made outputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_compress.errors import DataError, SettingError
from onnx_compress.runtime.metrics import cosine_per_sample, resolve_metric, score


def test_top1_accuracy_drop_and_agreement():
    labels = np.array([0, 1, 2, 1])
    ref = {"y": np.eye(3)[[0, 1, 2, 2]]}  # 3 of 4 right -> 75 %
    cand = {"y": np.eye(3)[[0, 1, 1, 2]]}  # 2 of 4 right -> 50 %
    result = score("top1", ref, cand, labels)
    assert result.reference == 75.0 and result.candidate == 50.0 and result.drop == 25.0
    assert result.details["agreement"] == 75.0


def test_cosine_known_vectors():
    ref = {"e": np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])}
    cand = {"e": np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0]])}
    result = score("cosine", ref, cand)
    np.testing.assert_allclose(cosine_per_sample(ref["e"], cand["e"]), [0.0, 1.0, 1.0])
    assert result.candidate == pytest.approx(2 / 3) and result.details["min"] == 0.0
    assert result.drop == pytest.approx(1 / 3)


def test_max_abs_over_all_outputs():
    ref = {"a": np.zeros((2, 2)), "b": np.ones(3)}
    cand = {"a": np.array([[0, 0.25], [0, 0]]), "b": np.array([1.0, 0.5, 1.0])}
    assert score("max_abs", ref, cand).drop == 0.5


def test_auto_and_user_metrics():
    assert resolve_metric("auto", has_labels=True) == "top1"
    assert resolve_metric("auto", has_labels=False) == "cosine"
    with pytest.raises(DataError, match="labels"):
        resolve_metric("top1", has_labels=False)
    with pytest.raises(SettingError, match="metric must be one of"):
        resolve_metric("f1", has_labels=True)

    def mean_output(outputs, labels):
        return float(next(iter(outputs.values())).mean())

    result = score(mean_output, {"y": np.full(4, 2.0)}, {"y": np.full(4, 1.5)})
    assert result.metric == "mean_output" and result.drop == 0.5
