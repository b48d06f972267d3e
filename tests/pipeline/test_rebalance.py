"""Re-balancing the budget: which stage was starved, by which earlier stage, and the order tried."""

from __future__ import annotations

import pytest

from onnx_compress.rebalance import Swap, balanced_value, find_swap
from onnx_compress.report import StageReport


def _stage(name: str, decision: str, drop: float = float("nan"), *, trials=(), nothing: str = "") -> StageReport:
    report = StageReport(name=name, pass_name=None if name == "original" else name.split(". ")[1],
                         decision=decision, drop=drop, trials=list(trials))
    if nothing:
        report.pass_result = {"nothing_to_do": nothing}
    return report


def _recipe(last: StageReport) -> list[StageReport]:
    """The `small` preset on the TorchScript MiniLM as issue 16 reports it: prune and low-rank
    rolled back, 4-bit embeddings spent 0.0064 of 0.01, then int8 (``last``)."""
    return [
        _stage("original", "original", 0.0),
        _stage("1. normalize", "applied", 0.0),
        _stage("2. prune_structured", "rolled back", trials=[{"strength": 1.0, "drop": 0.2, "holds": False}]),
        _stage("3. lowrank", "rolled back", trials=[{"strength": 1.0, "drop": 0.05, "holds": False}]),
        _stage("4. quantize", "applied", 0.0064),
        last,
    ]


def test_a_rolled_back_step_after_a_costly_one_is_starved_by_it():
    starved = _stage("5. quantize", "rolled back", trials=[{"strength": 1.0, "drop": 0.0166, "holds": False}])
    assert find_swap(_recipe(starved)) == Swap(donor=4, starved=5)


def test_a_pass_that_says_its_budget_was_too_small_is_starved_too():
    starved = _stage("5. quantize", "no change",
                     nothing="no quantization of this model keeps cosine within max_drop 0.0036 ...")
    assert find_swap(_recipe(starved)) == Swap(donor=4, starved=5)
    other = _stage("5. quantize", "no change", nothing="the model is already quantized")
    assert find_swap(_recipe(other)) is None


def test_int8_that_kept_nodes_float_for_the_budget_is_starved_too():
    partial = _stage("5. quantize", "applied", 0.0099)
    partial.pass_result = {"excluded": [{"name": "MatMul_3", "reason": "too small"},
                                        {"name": "MatMul_7", "reason": "sensitivity"}]}
    assert find_swap(_recipe(partial)) == Swap(donor=4, starved=5)
    partial.pass_result = {"excluded": [{"name": "MatMul_3", "reason": "too small"}]}
    assert find_swap(_recipe(partial)) is None


def test_no_swap_without_an_earlier_stage_that_spent_budget():
    reports = _recipe(_stage("5. quantize", "applied", 0.008))
    assert find_swap(reports) is None  # nothing starved
    # prune was rolled back, but nothing before it spent any budget: no one to move
    assert find_swap(reports[:3]) is None


def test_the_largest_spender_is_the_donor():
    reports = [
        _stage("original", "original", 0.0),
        _stage("1. normalize", "applied", 0.0),
        _stage("2. a", "applied", 0.001),
        _stage("3. b", "reduced", 0.007),  # spent 0.006
        _stage("4. c", "applied", 0.008),  # spent 0.001
        _stage("5. d", "rolled back", trials=[{"strength": 1.0, "drop": 0.02, "holds": False}]),
    ]
    assert find_swap(reports) == Swap(donor=3, starved=5)
    assert balanced_value(2.0, 1.5) == 3.0


@pytest.mark.slow
def test_a_size_only_step_that_starves_int8_is_retried_after_it(keras_encoder_onnx, keras_encoder_data):
    """The Keras encoder under a budget that 4-bit embeddings (cosine drop ~0.0014 on real
    tokens) nearly use up, leaving too little for int8 (~0.0001): the other order is tried, both
    end results are measured and reported, and the kept one has the higher value."""
    import onnx_compress as oc
    from onnx_compress.pipeline import PipelineSettings
    from onnx_compress.runtime import SessionSettings

    recipe = {"name": "starving", "passes": [
        {"quantize": {"mode": "weight_only", "op_types": ["Gather"], "block_size": 128, "guard": "warn"}},
        {"quantize": {"mode": "auto", "guard": "warn"}},
    ]}
    outcome = oc.compress(keras_encoder_onnx, recipe, calib=keras_encoder_data["calib"],
                          val=keras_encoder_data["val"], metric="cosine", max_drop=0.00148,
                          settings=PipelineSettings(bench_runs=20,
                                                    session=SessionSettings(provider="cpu", intra_op_threads=2)))
    report = outcome.report
    assert len(report.alternatives) == 2, [f"{s.name}: {s.decision} {s.pass_summary}" for s in report.stages]
    recipe_order, moved = report.alternatives
    assert recipe_order["label"] == "recipe order" and moved["label"].startswith("2. quantize moved last")
    assert [alt["chosen"] for alt in report.alternatives].count(True) == 1
    kept = next(alt for alt in report.alternatives if alt["chosen"])
    assert kept["value"] >= max(alt["value"] for alt in report.alternatives)
    for alt in report.alternatives:
        assert alt["size_ratio"] > 1.0 and alt["speedup"] > 0 and alt["drop"] <= 0.00148 + 1e-9
    from onnx_compress.report.text import render_text

    assert report.budget_met and render_text(report).count("re-balanced: ") == 2
    if moved["chosen"]:
        assert any(stage.name.startswith("2. quantize (moved after") for stage in report.stages)
