"""The pipeline with the real passes on the seed CNN: budgets held, searched down, rolled back."""

from __future__ import annotations

import dataclasses

import json

import numpy as np
import pytest

from onnx_compress.data import load_data
from onnx_compress.model_io import load_model
from onnx_compress.passes.normalize import Normalize
from onnx_compress.passes.prune import PruneStructured
from onnx_compress.pipeline import PipelineSettings, compress
from onnx_compress.runtime import Evaluator, Runner, validate

FAST = PipelineSettings(bench_runs=5, bench_batch=4, search_steps=4)


def test_small_preset_holds_the_budget_on_validation_data(torch_seed_onnx, digits_files, tmp_path):
    files = digits_files["NCHW"]
    outcome = compress(torch_seed_onnx, "small", calib=files["train"], val=files["val"], max_drop=0.5,
                       report_dir=tmp_path / "report", settings=FAST)
    report = outcome.report
    assert [s.pass_name for s in report.stages] == [None, "normalize", "prune_structured", "lowrank", "quantize",
                                                    "quantize", "quantize"]
    assert report.budget_met
    # 269 validation images cannot resolve 0.5 points with the margin: the report says so
    assert any("finer than 269 validation samples resolve" in w for w in report.warnings)
    # a refinement trial (one layer at full ratio) is judged by the same bound as the bisection's
    refined = [t for t in report.stages[2].trials if t["note"].startswith("refine:")]
    assert all(t["strength"] == report.stages[2].strength for t in refined)
    # pruning is kept (full ratio or searched down: a freshly trained seed has given both)
    assert report.stages[2].decision in ("applied", "reduced")
    # the 4-bit embedding step finds no Gather table in a CNN and leaves the model as it is
    assert report.stages[4].decision == "no change" and "Gather" in report.stages[4].pass_summary
    for stage in report.stages:
        if stage.kept:
            assert stage.drop <= 0.5 + 1e-9, stage.name
        for trial in stage.trials:  # a trial holds when its drop plus the margin's standard errors does
            bound = max(trial["drop"], 0.0) + FAST.budget_margin * trial["stderr"]  # a gain is not credited
            assert trial["holds"] == (bound <= 0.5 + 1e-9), trial
    # the model handed over is the one the report describes, and it is really smaller
    saved = outcome.save(tmp_path / "small.onnx")
    assert saved.stat().st_size == pytest.approx(report.final.size_bytes, rel=0.02)
    assert report.final.params < report.original.params / 2
    assert report.size_ratio > 8
    check = validate(torch_seed_onnx, saved, files["val"], "top1")
    assert check.drop == pytest.approx(report.final.drop)
    assert (tmp_path / "report" / "report.html").is_file()


def test_an_impossible_budget_rolls_every_pass_back(torch_seed_onnx, digits_files, tmp_path):
    """Nothing can cut the seed CNN without moving an output: every recipe pass is rolled back,
    the output is the normalized input, it holds the budget (budget_met is that model's own
    check), and the report says which model it is."""
    files = digits_files["NCHW"]
    recipe = {"passes": [{"prune_structured": {"ratio": 0.5}}, {"lowrank": {"energy": 0.5}}]}
    outcome = compress(torch_seed_onnx, recipe, calib=files["calib"], val=files["val"],
                       metric="max_abs", max_drop=0.0, settings=FAST, report_dir=tmp_path / "report")
    report = outcome.report
    decisions = {s.pass_name: s.decision for s in report.stages}
    assert decisions["prune_structured"] == "rolled back" and decisions["lowrank"] == "rolled back"
    assert "no setting met the budget" in report.stages[2].reason
    assert report.final.name == "1. normalize" and report.stages[1].kept
    assert any("no pass of the recipe could be applied within the budget; the output is the normalized input "
               "model" in w for w in report.warnings)
    feeds = {"input": np.load(files["val"])["input"][:8]}
    np.testing.assert_array_equal(Runner(outcome.model).run(feeds)[0], Runner(torch_seed_onnx).run(feeds)[0])
    # budget_met is the handed-over model's own verdict: re-measured here, independently
    saved = outcome.save(tmp_path / "out.onnx")
    check = validate(torch_seed_onnx, saved, files["val"], "max_abs")
    assert report.budget_met is (check.drop <= 0.0) is True
    summary = json.loads((tmp_path / "report" / "report.json").read_text())["summary"]
    assert summary["budget_met"] is True and summary["final_stage"] == "1. normalize"
    assert summary["size_ratio"] == pytest.approx(1.0, abs=0.05)


def test_a_pass_over_budget_at_full_strength_is_reduced(torch_seed_onnx, digits_files):
    """A budget between the drops of half and full strength: the search must settle on a
    strength in [0.5, 1) whose drop holds."""
    files = digits_files["NCHW"]
    original = load_model(torch_seed_onnx)
    calib, val = load_data(files["calib"]), load_data(files["val"])
    normalized = Normalize()(original).model
    full = PruneStructured(ratio=0.9).with_data(calibration=calib, validation=val)
    evaluator = Evaluator(original, val, "cosine")
    drop_full = evaluator.evaluate(full(normalized).model).drop
    drop_half = evaluator.evaluate(full.scaled(0.5)(normalized).model).drop
    assert 0 <= drop_half < drop_full  # cutting fewer channels costs less
    budget = (drop_half + drop_full) / 2
    exact = dataclasses.replace(FAST, budget_margin=0.0)  # the measured drop alone decides here
    outcome = compress(original, {"passes": [{"prune_structured": {"ratio": 0.9}}]},
                       calib=calib, val=val, metric="cosine", max_drop=budget, settings=exact)
    stage = outcome.report.stages[2]
    assert stage.decision == "reduced", stage.reason
    assert 0.5 <= stage.strength < 1 and stage.drop <= budget
    assert stage.trials[0]["strength"] == 1.0 and not stage.trials[0]["holds"]
    assert stage.trials[0]["drop"] == pytest.approx(drop_full)
    assert outcome.report.budget_met and outcome.report.final.params < outcome.report.original.params
