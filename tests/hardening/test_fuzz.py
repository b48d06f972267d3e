"""Fuzzing: mutated models and data files give clean errors, never a crash, in the loader and
in every pass.

The default run tries a few dozen mutations, each driving Normalize and one data-free pass in
turn (seconds); the slow run drives every pass, the data-aware ones included, on both seeds;
`make fuzz` runs thousands:
    .venv/bin/python tests/hardening/fuzz_harness.py MODEL DATA --examples 5000 --passes all
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_harness.py")
EXAMPLES = int(os.environ.get("ONNX_COMPRESS_FUZZ_EXAMPLES", "60"))


def _fuzz(model: Path, data: Path, examples: int, seed: int, passes: str) -> subprocess.CompletedProcess:
    # a subprocess, so that a crash of the interpreter fails this test instead of pytest itself
    return subprocess.run(
        [sys.executable, str(HARNESS), str(model), str(data), "--examples", str(examples),
         "--seed", str(seed), "--no-shrink", "--passes", passes],
        capture_output=True, text=True, timeout=1800,
    )


def _completed(stdout: str) -> dict[str, int]:
    """``completed: name=N ...``: per pass, the examples in which it ran to the end."""
    line = next(line for line in stdout.splitlines() if line.startswith("completed: "))
    return {name: int(count) for name, _, count in (item.partition("=") for item in line.split()[1:])}


DATA_FREE = ["normalize", "fuse", "lowrank", "prune_structured", "prune_unstructured", "quantize_dynamic",
             "quantize_weight_only"]


def test_mutated_seed_model_and_data_never_crash(torch_seed_onnx, digits_files):
    proc = _fuzz(torch_seed_onnx, digits_files["NCHW"]["val"], EXAMPLES, seed=1, passes="sample")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "no crash" in proc.stdout
    completed = _completed(proc.stdout)
    assert all(completed[name] > 0 for name in DATA_FREE), completed  # the run reached every pass


@pytest.mark.slow
def test_long_fuzz_run_drives_every_pass(torch_seed_onnx, keras_seed_onnx, digits_files):
    for model, layout, seed in ((torch_seed_onnx, "NCHW", 2), (keras_seed_onnx, "NHWC", 3)):
        proc = _fuzz(model, digits_files[layout]["val"], 1500, seed=seed, passes="sample")
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        proc = _fuzz(model, digits_files[layout]["val"], 200, seed=seed, passes="all")
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        completed = _completed(proc.stdout)
        assert all(count > 0 for count in completed.values()) and len(completed) == 10, completed
