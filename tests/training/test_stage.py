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


def test_prune_recover_preset_cuts_heads_ffn_and_a_layer_then_recovers_and_quantizes(keras_encoder_onnx,
                                                                                      keras_encoder_data):
    """The preset's own cut (heads, FFN neurons and a whole layer), recovered by distillation from the
    original, then its int8 steps, through the pipeline on the Keras/tf2onnx encoder. Only the training
    time is shortened (the preset trains 18 minutes per budget trial)."""
    import copy
    import re

    import numpy as np

    from onnx_compress.recipe import PRESETS
    from onnx_compress.runtime import Runner
    from onnx_compress.samples import keras_encoder

    recipe = copy.deepcopy(PRESETS["prune-recover"])
    cut = recipe["passes"][0]["prune_transformer"]
    assert cut["heads"] > 0 and cut["ffn"] > 0 and cut["layers"] >= 1  # the three kinds of cut, at full strength
    recipe["passes"][1]["recover"].update(max_minutes=0.5, epochs=4, steps_per_epoch=8, patience=4, lr=3e-3)
    train = keras_encoder.token_dataset(512, seed=3)
    outcome = compress(keras_encoder_onnx, recipe, calib=keras_encoder_data["calib"], val=keras_encoder_data["val"],
                       train=train, settings=PipelineSettings(bench_runs=3))
    stage = outcome.report.stages[2]
    assert stage.name == "2. prune_transformer+recover" and stage.decision == "applied", stage.reason
    assert "layers 2 -> 1" in stage.pass_summary and "heads 8 -> 3" in stage.pass_summary, stage.pass_summary
    # the report names what was cut per layer (one layer removed, the other 4 -> 3 heads, 128 -> 96 neurons)
    assert re.search(r"; layer \d: removed", stage.pass_summary), stage.pass_summary
    assert re.search(r"; layer \d: heads 4 -> 3, FFN 128 -> 96", stage.pass_summary), stage.pass_summary
    recovery = stage.pass_result["recovery"]
    assert recovery["after"] >= recovery["before"] and len(recovery["history"]) == recovery["epochs_run"] + 1
    assert any(s.pass_name == "quantize" and s.decision == "applied" for s in outcome.report.stages[3:])
    runner = Runner(outcome.model)
    out = runner.run({spec.name: keras_encoder_data["val"].inputs[spec.name][:4] for spec in runner.input_specs})[0]
    assert out.shape == (4, 32, 64) and np.isfinite(out).all()  # the original output's shape


def test_prune_recover_preset_without_training_data_rolls_the_cut_back_with_its_recovery(keras_encoder_onnx,
                                                                                         keras_encoder_data):
    outcome = compress(keras_encoder_onnx, "prune-recover", calib=keras_encoder_data["calib"],
                       val=keras_encoder_data["val"], settings=PipelineSettings(bench_runs=3))
    stage = outcome.report.stages[2]
    assert stage.name == "2. prune_transformer+recover" and stage.decision == "rolled back"
    assert "needs training data" in stage.reason and "--train" in stage.reason
    assert stage.pass_result == {}  # nothing of the cut was kept
    assert any(s.pass_name == "quantize" and s.decision == "applied" for s in outcome.report.stages[3:])
