"""The recover stage in the pipeline: cut passes searched with recovery in the loop, rolled back
with a reason when there is nothing to train on."""

from __future__ import annotations

from onnx_compress.pipeline import PipelineSettings, compress
from onnx_compress.recipe import load_recipe


def test_recipe_with_recover_groups_the_cut_and_holds_the_budget(torch_seed_onnx, digits_files):
    files = digits_files["NCHW"]
    recipe = {"passes": [{"prune_structured": {"ratio": 0.85}},
                         {"recover": {"epochs": 4, "lr": 0.003, "patience": 4}}]}
    outcome = compress(torch_seed_onnx, recipe, calib=files["calib"], val=files["val"], train=files["train"],
                       max_drop=3.0,  # the measured drop decides (margin 0): this is about recovery in the search
                       settings=PipelineSettings(bench_runs=5, search_steps=2, budget_margin=0.0))
    stage = outcome.report.stages[2]
    assert stage.name == "2. prune_structured+recover"
    assert stage.decision in ("applied", "reduced")
    recovery = stage.pass_result["recovery"]
    assert recovery["improved"] and recovery["after"] >= recovery["before"]
    assert len(recovery["history"]) == recovery["epochs_run"] + 1
    assert "recover: validation top1" in stage.pass_summary
    assert stage.drop <= 3.0 and outcome.report.budget_met
    assert stage.params < outcome.report.stages[0].params / 5


def test_recover_without_training_data_is_rolled_back_with_the_reason(torch_seed_onnx, digits_files):
    files = digits_files["NCHW"]
    outcome = compress(torch_seed_onnx, {"passes": [{"recover": {"epochs": 1}}]}, calib=files["calib"],
                       val=files["val"], settings=PipelineSettings(bench_runs=3))
    stage = outcome.report.stages[2]
    assert stage.decision == "rolled back"
    assert "needs training data" in stage.reason and "--train" in stage.reason


def test_tiny_preset_loads_without_torch_work():
    recipe = load_recipe("tiny")
    assert [s.name for s in recipe.steps] == ["prune_structured", "lowrank", "recover", "quantize"]
