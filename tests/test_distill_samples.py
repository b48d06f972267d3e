"""The distillation samples run end to end (slow: they train the seeds and six students each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.mark.slow
@pytest.mark.parametrize("sample", ["distill_torch.py", "distill_keras.py"])
def test_distill_sample_prints_both_students_and_a_verdict(sample, tmp_path):
    proc = subprocess.run([sys.executable, str(SAMPLES / sample), "--epochs", "3", "--seeds", "0", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "labels alone" in out and "distilled" in out and "test top-1 %" in out
    assert any(phrase in out for phrase in ("helped on every seed", "did NOT help", "no consistent difference"))
    assert (tmp_path / "student.onnx").is_file()
