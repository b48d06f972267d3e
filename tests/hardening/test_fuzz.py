"""Fuzzing: mutated models and data files give clean errors, never a crash.

The default run tries a few dozen mutations (seconds); `make fuzz` runs thousands:
    .venv/bin/python tests/hardening/fuzz_harness.py MODEL DATA --examples 5000
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_harness.py")
EXAMPLES = int(os.environ.get("ONNX_COMPRESS_FUZZ_EXAMPLES", "60"))


def _fuzz(model: Path, data: Path, examples: int, seed: int) -> subprocess.CompletedProcess:
    # a subprocess, so that a crash of the interpreter fails this test instead of pytest itself
    return subprocess.run(
        [sys.executable, str(HARNESS), str(model), str(data), "--examples", str(examples),
         "--seed", str(seed), "--no-shrink"],
        capture_output=True, text=True, timeout=900,
    )


def test_mutated_seed_model_and_data_never_crash(torch_seed_onnx, digits_files):
    proc = _fuzz(torch_seed_onnx, digits_files["NCHW"]["val"], EXAMPLES, seed=1)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "no crash" in proc.stdout


@pytest.mark.slow
def test_long_fuzz_run(torch_seed_onnx, keras_seed_onnx, digits_files):
    for model, layout, seed in ((torch_seed_onnx, "NCHW", 2), (keras_seed_onnx, "NHWC", 3)):
        proc = _fuzz(model, digits_files[layout]["val"], 1500, seed=seed)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
