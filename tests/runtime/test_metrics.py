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


def _per_token(seed: int = 0):
    """[batch 2, sequence 4, hidden 3] outputs and a padding mask with 3 and 2 real tokens."""
    rng = np.random.default_rng(seed)
    reference = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=np.int64)
    return reference, mask


def test_per_token_outputs_are_compared_on_real_tokens_only():
    reference, mask = _per_token()
    noisy = reference.copy()
    noisy[mask == 0] = np.random.default_rng(1).standard_normal((3, 3)) * 10  # padded positions: noise
    masked = score("cosine", {"h": reference}, {"h": noisy}, token_mask=mask)
    assert masked.candidate == pytest.approx(1.0) and masked.drop == pytest.approx(0.0, abs=1e-12)
    assert masked.details["tokens"] == 5 and masked.details["positions"] == 8
    assert masked.scope == "over 5 real tokens of 8 positions"
    everything = score("cosine", {"h": reference}, {"h": noisy})  # no mask: the noise counts
    assert everything.drop > 0.1 and "tokens" not in everything.details
    assert score("max_abs", {"h": reference}, {"h": noisy}, token_mask=mask).drop == 0.0
    assert score("max_abs", {"h": reference}, {"h": noisy}).drop > 1.0


def test_per_token_cosine_is_per_real_token_with_the_worst_as_min():
    reference, mask = _per_token()
    candidate = reference.copy()
    candidate[1, 1] = -candidate[1, 1]  # one real token flipped: cosine -1 for it
    result = score("cosine", {"h": reference}, {"h": candidate}, token_mask=mask)
    assert result.details["min"] == pytest.approx(-1.0)
    assert result.candidate == pytest.approx((4 * 1.0 - 1.0) / 5)


def test_the_mask_rule_needs_a_per_token_output():
    pooled = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    _, mask = _per_token()
    result = score("cosine", {"e": pooled}, {"e": pooled * 2}, token_mask=mask)  # rank 2: not per token
    assert "tokens" not in result.details and result.details["samples"] == 2
    with pytest.raises(DataError, match="no real token"):
        reference, _ = _per_token()
        score("cosine", {"h": reference}, {"h": reference}, token_mask=np.zeros((2, 4), np.int64))


def test_evaluator_uses_the_attention_mask_of_a_per_token_model(keras_encoder_onnx, keras_encoder_data):
    from onnx_compress.runtime.validate import Evaluator

    data = keras_encoder_data["val"].take(40)
    real = int(data.inputs["attention_mask"].sum())
    evaluator = Evaluator(keras_encoder_onnx, data, "cosine")
    assert evaluator.token_mask is not None
    assert evaluator.scope.startswith(f"cosine over {real:,} real tokens of {40 * 32:,} positions")
    same = evaluator.evaluate(keras_encoder_onnx)
    assert same.drop == pytest.approx(0.0, abs=1e-6) and same.details["tokens"] == real
    every = Evaluator(keras_encoder_onnx, data, "cosine", real_tokens_only=False)
    assert every.token_mask is None and every.scope == "cosine over 40 samples"
