"""Refinement of a searched-down structured cut: one group at a time at full ratio, on both
seed CNN exports (PyTorch and tf2onnx), and in the pipeline with the budget's margin."""

from __future__ import annotations

import pytest

from onnx_compress.budget import DEFAULT_MARGIN
from onnx_compress.model_io import load_model
from onnx_compress.passes.normalize import Normalize
from onnx_compress.passes.prune import PruneStructured
from onnx_compress.passes.prune.prune_structured_pass import PruneStructuredSettings


@pytest.mark.parametrize("fixture", ["torch_seed_onnx", "keras_seed_onnx"])
def test_refined_cuts_one_group_at_full_ratio_and_the_rest_at_the_strength(fixture, request):
    model = Normalize()(load_model(request.getfixturevalue(fixture))).model
    prune = PruneStructured(PruneStructuredSettings(ratio=0.75, round_to=1))
    keys = prune.refinement_keys(model)
    # conv1, conv2, fc1 (the classifier's outputs are the model's: never a group), in graph order
    weighted = [str(n.name) for n in model.graph if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert keys == weighted[:3]
    base = prune.refined(0.5, ())(model)
    first = prune.refined(0.5, (keys[0],))(model)
    widths = {name: after for g in base.groups for name, (_, after) in g.widths.items()}
    refined = {name: after for g in first.groups for name, (_, after) in g.widths.items()}
    assert widths[keys[0]] == 32 - int(0.375 * 32) and refined[keys[0]] == 32 - int(0.75 * 32)
    assert refined[keys[1]] == widths[keys[1]] == 64 - int(0.375 * 64)  # the others stay at the strength
    assert first.params_after < base.params_after and first.macs_after < base.macs_after
    assert prune.refined(1.0, ()).settings == prune.settings


@pytest.mark.slow
def test_the_pipeline_refines_a_reduced_cut_within_the_budget(torch_seed_onnx, digits_files):
    from onnx_compress.pipeline import PipelineSettings, compress

    files = digits_files["NCHW"]
    settings = PipelineSettings(bench_runs=3, bench_batch=4, search_steps=3)
    # 0.95 of every group breaks 0.5 points; the bisection holds lower, then tries each group at 0.95
    recipe = {"passes": [{"prune_structured": {"ratio": 0.95, "reconstruct": True}}]}
    outcome = compress(torch_seed_onnx, recipe, calib=files["train"], val=files["val"], max_drop=0.5,
                       settings=settings)
    stage = outcome.report.stages[2]
    assert stage.decision == "reduced", stage.reason
    refined = [t for t in stage.trials if t["note"].startswith("refine:")]
    assert refined and all(t["strength"] == stage.strength for t in refined)
    for trial in stage.trials:  # every trial, refined or not, judged by drop + margin x se
        assert trial["holds"] == (max(trial["drop"], 0.0) + DEFAULT_MARGIN * trial["stderr"] <= 0.5 + 1e-9), trial
    kept = [t["note"].split()[1] for t in refined if t["holds"]]
    for name in kept:
        assert name in stage.reason
    assert outcome.report.budget_met and outcome.report.drop_bound <= 0.5 + 1e-9
