"""The pipeline's plumbing on the seed CNN: data rules, report files, CLI errors."""

from __future__ import annotations

import json

import pytest

from onnx_compress.budget import DEFAULT_MARGIN
from onnx_compress.errors import BudgetError, DataError
from onnx_compress.pipeline import PipelineSettings, compress

FAST = PipelineSettings(bench_runs=5, bench_batch=2)


def test_normalize_only_report_and_save(torch_seed_onnx, digits_files, tmp_path):
    files = digits_files["NCHW"]
    outcome = compress(torch_seed_onnx, "normalize-only", calib=files["calib"], val=files["val"],
                       max_drop=0.5, report_dir=tmp_path / "report", settings=FAST)
    report = outcome.report
    assert [s.name for s in report.stages] == ["original", "1. normalize"]
    assert report.stages[1].decision == "no change" and report.budget_met
    assert report.metric == "top1" and report.original.metric_value > 90
    assert report.original.params == report.final.params == 225_034
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["summary"]["budget_met"] is True and data["stages"][0]["decision"] == "original"
    html = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html
    out = outcome.save(tmp_path / "out.onnx")
    assert out.stat().st_size > 0


def test_budget_needs_held_out_validation_data(torch_seed_onnx, digits_files):
    files = digits_files["NCHW"]
    with pytest.raises(BudgetError, match="validation data"):
        compress(torch_seed_onnx, "normalize-only", calib=files["calib"], max_drop=0.5, settings=FAST)
    with pytest.raises(BudgetError, match="held-out"):
        compress(torch_seed_onnx, "normalize-only", calib=files["calib"], val=files["calib"], max_drop=0.5,
                 settings=FAST)
    with pytest.raises(DataError, match="validation data"):
        compress(torch_seed_onnx, "normalize-only", val=digits_files["NHWC"]["val"], max_drop=0.5, settings=FAST)


def test_cli_refuses_bad_recipes_and_outputs_without_writing(cli, torch_seed_onnx, tmp_path, digits_files):
    (tmp_path / "r.yaml").write_text("passes:\n  - quantise: {}\n")
    proc = cli("compress", torch_seed_onnx, "-o", tmp_path / "o.onnx", "--recipe", tmp_path / "r.yaml")
    assert proc.returncode == 2 and "unknown pass 'quantise'" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("compress", torch_seed_onnx, "-o", torch_seed_onnx, "--preset", "normalize-only")
    assert proc.returncode == 2 and "overwrite the input" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_a_stage_slower_than_the_stage_before_it_is_said():
    from onnx_compress.pipeline import _slower_stage_warnings, _Stage
    from onnx_compress.report import StageReport

    def stage(name: str, speedup: float, size: int) -> _Stage:
        return _Stage(StageReport(name, None, "applied", speedup=speedup, size_bytes=size), object())  # type: ignore[arg-type]

    original, lowrank = stage("original", 1.0, 900), stage("3. lowrank", 4.37, 43)
    slower = _slower_stage_warnings([original, lowrank, stage("5. quantize", 3.20, 28)], batch=8)
    assert len(slower) == 1
    assert "5. quantize" in slower[0] and "1.37x SLOWER" in slower[0] and "1.54x smaller" in slower[0]
    # within the 5 % noise, or faster: nothing to say; a rolled-back stage shares its model
    assert _slower_stage_warnings([original, lowrank, stage("5. quantize", 4.25, 28)], batch=8) == []
    same = _Stage(StageReport("4. quantize", None, "rolled back", speedup=3.0, size_bytes=43), lowrank.model)
    assert _slower_stage_warnings([original, lowrank, same], batch=8) == []


def test_cli_compress_objective_time_budget_progress_and_uncertainty(cli, torch_seed_onnx, digits_files, tmp_path):
    files = digits_files["NCHW"]
    done = cli("compress", torch_seed_onnx, "-o", tmp_path / "q.onnx", "--preset", "cpu-int8", "--data", files["calib"],
               "--val", files["val"], "--max-drop", "0.5", "--objective", "size", "--time-budget", "600",
               "--bench-runs", "5", "--json")
    assert done.returncode == 0, done.stderr
    # one progress line per stage, with its time, on stderr
    assert "[1/2] normalize: no change in" in done.stderr and "[2/2] quantize:" in done.stderr
    report = json.loads(done.stdout)
    quantize = report["stages"][2]
    assert quantize["settings"]["objective"] == "size"  # the pipeline's objective replaces the preset's balanced
    assert quantize["settings"]["budget_margin"] == DEFAULT_MARGIN
    assert quantize["decision"] == "applied" and report["summary"]["size_ratio"] > 3.5
    # the drop with its standard error and the bound the budget was checked against
    assert quantize["drop_stderr"] >= 0 and report["summary"]["drop_bound"] <= 0.5 + 1e-9
    assert report["budget_margin"] == DEFAULT_MARGIN and report["timings"]["time budget"] == 600
    assert report["timings"]["total"] >= report["timings"]["passes (search trials, incl. their validation)"] > 0
    assert quantize["timings"]["trials"] == 1 and "last trial: speed guard" in quantize["timings"]
