"""The pipeline with the real passes on the seed CNN: budgets held, searched down, rolled back."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_compress.pipeline import PipelineSettings, compress
from onnx_compress.runtime import Runner, validate

FAST = PipelineSettings(bench_runs=5, bench_batch=4, search_steps=4)


def test_small_preset_holds_the_budget_on_validation_data(torch_seed_onnx, digits_files, tmp_path):
    files = digits_files["NCHW"]
    outcome = compress(torch_seed_onnx, "small", calib=files["calib"], val=files["val"], max_drop=0.5,
                       report_dir=tmp_path / "report", settings=FAST)
    report = outcome.report
    assert [s.pass_name for s in report.stages] == [None, "normalize", "prune_structured", "lowrank", "quantize",
                                                    "quantize"]
    assert report.budget_met
    # reconstruction keeps the full ratio within the budget (measured: val drop 0, 16x smaller)
    assert report.stages[2].decision == "applied"
    # the 4-bit embedding step finds no Gather table in a CNN and leaves the model as it is
    assert report.stages[4].decision == "no change" and "Gather" in report.stages[4].pass_summary
    for stage in report.stages:
        if stage.kept:
            assert stage.drop <= 0.5 + 1e-9, stage.name
        for trial in stage.trials:
            assert trial["holds"] == (trial["drop"] <= 0.5 + 1e-9)
    # the model handed over is the one the report describes, and it is really smaller
    saved = outcome.save(tmp_path / "small.onnx")
    assert saved.stat().st_size == pytest.approx(report.final.size_bytes, rel=0.02)
    assert report.final.params < report.original.params / 2
    assert report.size_ratio > 8
    check = validate(torch_seed_onnx, saved, files["val"], "top1")
    assert check.drop == pytest.approx(report.final.drop)
    assert (tmp_path / "report" / "report.html").is_file()


def test_an_impossible_budget_rolls_every_pass_back(torch_seed_onnx, digits_files):
    files = digits_files["NCHW"]
    recipe = {"passes": [{"prune_structured": {"ratio": 0.5}}, {"lowrank": {"energy": 0.5}}]}
    outcome = compress(torch_seed_onnx, recipe, calib=files["calib"], val=files["val"],
                       metric="max_abs", max_drop=0.0, settings=FAST)
    decisions = {s.pass_name: s.decision for s in outcome.report.stages}
    assert decisions["prune_structured"] == "rolled back" and decisions["lowrank"] == "rolled back"
    assert "no setting met the budget" in outcome.report.stages[2].reason
    assert any("no pass of the recipe" in w for w in outcome.report.warnings)
    feeds = {"input": np.load(files["val"])["input"][:8]}
    np.testing.assert_array_equal(Runner(outcome.model).run(feeds)[0], Runner(torch_seed_onnx).run(feeds)[0])


def test_a_reduced_pass_reports_its_strength_and_trials(torch_seed_onnx, digits_files):
    files = digits_files["NCHW"]
    # pruning 90 % of every layer breaks a 0.5-point budget; the search must settle lower
    outcome = compress(torch_seed_onnx, {"passes": [{"prune_structured": {"ratio": 0.9}}]},
                       calib=files["calib"], val=files["val"], max_drop=0.5, settings=FAST)
    stage = outcome.report.stages[2]
    assert stage.decision in ("reduced", "rolled back")
    assert stage.trials[0]["strength"] == 1.0 and not stage.trials[0]["holds"]
    if stage.decision == "reduced":
        assert 0 < stage.strength < 1 and stage.drop <= 0.5
