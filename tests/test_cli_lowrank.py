"""``onnx-compress lowrank`` through the real console script."""

from __future__ import annotations

import hashlib
import json

from onnx_compress.model_io import load_model
from onnx_compress.stats import count_params


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_lowrank_plain_and_data_aware(cli, tmp_path, torch_seed_onnx, digits_files):
    before = _digest(torch_seed_onnx)
    out = tmp_path / "plain.onnx"
    proc = cli("lowrank", torch_seed_onnx, "-o", out, "--rank-ratio", "0.25", "--min-size", "1000", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["method"] == "svd" and report["criterion"] == "rank_ratio=0.25" and report["calibration_samples"] == 0
    factored = {layer["weight"]: layer for layer in report["layers"] if layer["factored"]}
    assert set(factored) == {"conv2.weight", "fc1.weight", "fc2.weight"}
    assert factored["fc1.weight"]["rank"] == 32 and factored["fc1.weight"]["output_error"] is None
    assert report["params_after"] == count_params(load_model(out)) < report["params_before"]
    assert report["size_after"] < report["size_before"] and _digest(torch_seed_onnx) == before

    aware = tmp_path / "aware.onnx"
    human = cli("lowrank", torch_seed_onnx, "-o", aware, "--max-error", "0.05", "--data",
                digits_files["NCHW"]["calib"])
    assert human.returncode == 0, human.stderr
    assert "factored" in human.stdout and "output err" in human.stdout and "method whitened on" in human.stdout
    score = json.loads(cli("validate", torch_seed_onnx, aware, "--data", digits_files["NCHW"]["test"],
                           "--metric", "top1", "--json").stdout)
    assert score["drop"] < 3.0  # every layer within 5 % output error on calibration data


def test_lowrank_errors_are_one_line(cli, tmp_path, torch_seed_onnx):
    _one_line_error(cli("lowrank", torch_seed_onnx, "-o", tmp_path / "x.onnx", "--max-error", "0.1"), "--data")
    _one_line_error(cli("lowrank", torch_seed_onnx, "-o", tmp_path / "x.onnx", "--energy", "1.5"), "energy")
    _one_line_error(cli("lowrank", torch_seed_onnx, "-o", torch_seed_onnx, "--energy", "0.9"), "overwrite the input")
    missing = cli("lowrank", torch_seed_onnx, "-o", tmp_path / "x.onnx")
    assert missing.returncode == 2 and "one of the arguments --energy --rank-ratio --max-error is required" in missing.stderr
    helptext = cli("lowrank", "--help").stdout
    for flag in ("--energy", "--rank-ratio", "--max-error", "--data", "--min-size", "--method", "--exclude", "--json"):
        assert flag in helptext
