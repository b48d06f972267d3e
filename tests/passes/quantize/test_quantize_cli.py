"""``onnx-compress quantize``: the real console script on the seed CNN and digits files."""

from __future__ import annotations

import hashlib
import json


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_static_quantize_prints_what_was_done_and_writes_the_model(cli, torch_seed_onnx, digits_files, tmp_path):
    files = digits_files["NCHW"]
    before = _digest(torch_seed_onnx)
    out = tmp_path / "q.onnx"
    done = cli("quantize", torch_seed_onnx, "-o", out, "--mode", "static", "--data", files["calib"],
               "--val", files["val"], "--metric", "top1", "--max-drop", "0.5", "--exclude", "node_linear_1",
               "--guard", "warn", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["output"] == str(out) and out.exists()
    assert payload["mode"] == "static" and payload["modified"] is True
    assert sorted(payload["quantized"]) == ["node_conv2d", "node_conv2d_1", "node_linear"]
    assert payload["excluded"][0]["name"] == "node_linear_1" and payload["excluded"][0]["reason"] == "user"
    assert payload["size_after"] * 3 < payload["size_before"]
    assert payload["speed"]["speedup"] > 0 and payload["accuracy"]["metric"] == "top1"
    assert _digest(torch_seed_onnx) == before  # the input is never modified

    human = cli("quantize", torch_seed_onnx, "-o", tmp_path / "d.onnx", "--mode", "dynamic", "--guard", "off",
                "--no-per-channel")
    assert human.returncode == 0, human.stderr
    # guard off: nothing measured, so dynamic Conv (slow here) is not dropped, and the report says so
    assert "quantized: 2 nodes (Conv x1, Gemm x1)" in human.stdout
    assert "speed: not measured (guard off)" in human.stdout
    assert "too small" in human.stdout and "smaller" in human.stdout and "wrote" in human.stdout

    again = cli("quantize", out, "-o", tmp_path / "qq.onnx", "--mode", "dynamic")
    assert again.returncode == 3
    assert "nothing to do: the model is already quantized" in again.stdout
    assert not (tmp_path / "qq.onnx").exists()


def test_cli_bad_data_and_same_output_are_one_line_errors(cli, torch_seed_onnx, digits_files, tmp_path):
    wrong = digits_files["NHWC"]["calib"]  # NHWC data for an NCHW model
    done = cli("quantize", torch_seed_onnx, "-o", tmp_path / "q.onnx", "--mode", "static", "--data", wrong)
    assert done.returncode == 2
    assert done.stderr.startswith("error: calibration data: input 'input' has shape") and done.stderr.count("\n") == 1
    same = cli("quantize", torch_seed_onnx, "-o", torch_seed_onnx, "--mode", "dynamic")
    assert same.returncode == 2 and "overwrite the input" in same.stderr
    missing = cli("quantize", torch_seed_onnx, "-o", tmp_path / "q.onnx", "--mode", "static")
    assert missing.returncode == 2 and "needs calibration data" in missing.stderr
