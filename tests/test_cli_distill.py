"""``onnx-compress distill`` end to end: a Keras teacher (ONNX, NHWC) teaches a PyTorch student (NCHW)."""

from __future__ import annotations

import json

from onnx_compress.data import Dataset
from onnx_compress.runtime import Runner, SessionSettings

FACTORY = """
import torch
from onnx_compress.samples.seed_torch_cnn import SimpleModel
from onnx_compress.training.narrow.torch import narrow_student


def half_width():
    torch.manual_seed(0)
    return narrow_student(SimpleModel(), 0.5)


def seven_classes():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 7))
"""


def _one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_distill_cli_cross_framework(cli, tmp_path, keras_seed_onnx, digits_files, digits_nchw, keras_seed, digits_nhwc):
    from onnx_compress.samples import seed_keras_cnn

    factory = tmp_path / "student.py"
    factory.write_text(FACTORY)
    out = tmp_path / "student.onnx"
    files = digits_files["NCHW"]
    proc = cli("distill", "--teacher", keras_seed_onnx, "--student", f"{factory}:half_width",
               "--data", files["train"], "--val", files["val"], "--teacher-layout", "NCHW->NHWC",
               "--epochs", 4, "-o", out, "--json")  # the default lr and batch size
    assert proc.returncode == 0, proc.stderr
    assert "distill epoch 4/4" in proc.stderr  # the progress bar, on stderr
    report = json.loads(proc.stdout)
    history = report["history"]
    assert history["teacher_outputs"] == "probs" and history["student_outputs"] == "log_probs"
    assert len(history["loss"]) == 4 and history["loss"][-1] < history["loss"][0]
    # the defaults that train the half-width student to the teacher's level in a few epochs
    assert history["settings"]["lr"] == 2e-3 and history["settings"]["batch_size"] == 32
    assert history["val_metric"][-1] > 88.0, history["val_metric"]
    assert report["export"]["max_abs_error"] < 1e-4 and report["export"]["input_names"] == ["input"]
    assert report["student"]["params"] < 0.3 * report["teacher"]["params"]
    student_pred = Runner(out, SessionSettings(provider="cpu")).run_dataset(digits_nchw.test)["output"].argmax(1)
    keras_pred = seed_keras_cnn.predict(keras_seed, digits_nhwc.test)
    assert (student_pred == keras_pred).mean() > 0.85


def test_distill_cli_refuses_bad_input_before_training(cli, tmp_path, torch_seed_onnx, digits_files, digits_nchw):
    factory = tmp_path / "student.py"
    factory.write_text(FACTORY)
    files = digits_files["NCHW"]
    out = tmp_path / "out.onnx"
    _one_line_error(cli("distill", "--teacher", torch_seed_onnx, "--student", f"{factory}:seven_classes",
                        "--data", files["train"], "-o", out), "teacher has 10 outputs per sample, the student 7")
    unlabeled = Dataset({"input": digits_nchw.train.inputs["input"][:64]}).save(tmp_path / "unlabeled.npz")
    _one_line_error(cli("distill", "--teacher", torch_seed_onnx, "--student", f"{factory}:half_width",
                        "--data", unlabeled, "-o", out), "no 'labels' array", "alpha")
    _one_line_error(cli("distill", "--teacher", torch_seed_onnx, "--student", f"{factory}:half_width",
                        "--data", files["train"], "-o", torch_seed_onnx), "would overwrite the input")
    assert not out.exists()
    help_text = " ".join(cli("distill", "--help").stdout.split())
    assert "run as code" in help_text and "--json" in help_text and "--teacher-layout" in help_text
