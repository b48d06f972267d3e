"""``onnx-compress prune`` through the real console script."""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnx_compress.model_io import load_model
from onnx_compress.runtime import Runner, SessionSettings


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _one_error(proc, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


def test_structured_prune_reports_before_after_and_untouched(cli, keras_seed_onnx, digits_files, tmp_path):
    out = tmp_path / "pruned.onnx"
    before_bytes = keras_seed_onnx.read_bytes()
    report = _json(cli("prune", keras_seed_onnx, "-o", out, "--structured", "0.5", "--round-to", "8",
                       "--importance", "activation", "--data", digits_files["NHWC"]["calib"], "--json"))
    assert report["mode"] == "structured"
    assert report["after"]["params"] < 0.6 * report["before"]["params"]
    assert report["after"]["macs"] < 0.6 * report["before"]["macs"]
    assert report["after"]["size_bytes"] == out.stat().st_size < report["before"]["size_bytes"]
    groups = report["result"]["groups"]
    assert [g["status"] for g in groups] == ["pruned", "pruned", "pruned", "untouched"]
    assert "Softmax" in groups[-1]["reason"]
    assert keras_seed_onnx.read_bytes() == before_bytes  # input never modified
    onnx.checker.check_model(str(out), full_check=True)
    test = np.load(digits_files["NHWC"]["test"])
    (probs,) = Runner(out, SessionSettings(provider="cpu")).run({"input": test["input"][:4]})
    assert probs.shape == (4, 10)

    human = cli("prune", keras_seed_onnx, "-o", tmp_path / "p2.onnx", "--structured", "0.25")
    assert human.returncode == 0, human.stderr
    assert "params" in human.stdout and "MACs" in human.stdout and "left untouched" in human.stdout


def test_unstructured_and_nm(cli, torch_seed_onnx, tmp_path):
    out = tmp_path / "sparse.onnx"
    report = _json(cli("prune", torch_seed_onnx, "-o", out, "--nm", "2:4", "--json"))
    result = report["result"]
    assert result["pattern"] == "2:4" and abs(result["sparsity"] - 0.5) < 0.01
    assert result["compressed_after"] < 0.7 * result["compressed_before"]
    assert report["after"]["params"] == report["before"]["params"]  # dense storage, zeros inside
    assert len(result["skipped"]) == 2  # first and last layers stay dense
    weights = load_model(out).graph.initializers["fc1.weight"].const_value.numpy()
    assert ((weights.reshape(128, -1, 4) != 0).sum(-1) <= 2).all()

    human = cli("prune", torch_seed_onnx, "-o", tmp_path / "s2.onnx", "--unstructured", "0.3", "--prune-first-last")
    assert human.returncode == 0, human.stderr
    assert "gzip size" in human.stdout and "no speed" in human.stdout


def test_prune_errors_are_one_line(cli, torch_seed_onnx, tmp_path):
    _one_error(cli("prune", torch_seed_onnx, "-o", tmp_path / "x.onnx"), "--structured R")
    _one_error(cli("prune", torch_seed_onnx, "-o", tmp_path / "x.onnx", "--structured", "0.5",
                   "--importance", "activation"), "--data")
    _one_error(cli("prune", torch_seed_onnx, "-o", tmp_path / "x.onnx", "--structured", "0.5", "--protect", "nope"),
               "no node named")
    assert not (tmp_path / "x.onnx").exists()


def test_structured_prune_with_reconstruction(cli, torch_seed_onnx, digits_files, tmp_path):
    calib = digits_files["NCHW"]["calib"]
    report = _json(cli("prune", torch_seed_onnx, "-o", tmp_path / "r.onnx", "--structured", "0.5", "--reconstruct",
                       "--data", calib, "--json"))
    layers = report["result"]["reconstruction"]
    assert [layer["status"] for layer in layers][:2] == ["refit"] * 2 and len(layers) == 3
    assert all(layer["error_after"] < layer["error_before"] for layer in layers if layer["status"] == "refit")
    assert all(layer["reason"] for layer in layers if layer["status"] != "refit")
    human = cli("prune", torch_seed_onnx, "-o", tmp_path / "r2.onnx", "--structured", "0.3", "--reconstruct",
                "--data", calib)
    assert human.returncode == 0, human.stderr
    assert "reconstructed layer" in human.stdout and "refit" in human.stdout
    _one_error(cli("prune", torch_seed_onnx, "-o", tmp_path / "r3.onnx", "--structured", "0.5", "--reconstruct"),
               "--reconstruct needs calibration data")
