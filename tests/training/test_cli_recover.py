"""``onnx-compress recover`` through the real console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from onnx_compress.model_io import load_model


def test_cli_recover_writes_the_recovered_model(cli, pruned_torch_seed, torch_seed_onnx, digits_files, tmp_path):
    files = digits_files["NCHW"]
    out = tmp_path / "recovered.onnx"
    run = cli("recover", pruned_torch_seed, "--teacher", torch_seed_onnx, "--data", files["train"], "--val",
              files["val"], "-o", out, "--epochs", "3", "--lr", "3e-3", "--json")
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    assert payload["output"] == str(out) and payload["improved"]
    assert [r["epoch"] for r in payload["history"]][:2] == [0, 1]
    assert payload["after"] > payload["before"]
    assert [n.op_type for n in load_model(out).graph] == [n.op_type for n in load_model(pruned_torch_seed).graph]


def test_cli_recover_bad_input_is_one_line(cli, pruned_torch_seed, torch_seed_onnx, digits_files, tmp_path):
    files = digits_files["NHWC"]  # the wrong layout for this model
    out = tmp_path / "x.onnx"
    run = cli("recover", pruned_torch_seed, "--teacher", torch_seed_onnx, "--data", files["train"], "--val",
              files["val"], "-o", out)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("error: training data")
    assert not out.exists()


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child, before exec: SIGINT back to its default. A test run started in the background
    (``nohup make test &``: the shell ignores SIGINT for background jobs) passes the ignored SIGINT on
    to the child, and Python then rightly installs no KeyboardInterrupt handler: Ctrl-C could not
    reach the command, and the test would fail for a reason that is not the product's."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_the_best_epoch_so_far(pruned_torch_seed, torch_seed_onnx, digits_files, tmp_path):
    files = digits_files["NCHW"]
    out = tmp_path / "interrupted.onnx"
    script = Path(sys.executable).parent / "onnx-compress"
    proc = subprocess.Popen([str(script), "-v", "recover", str(pruned_torch_seed), "--teacher", str(torch_seed_onnx),
                             "--data", str(files["train"]), "--val", str(files["val"]), "-o", str(out),
                             "--epochs", "200", "--patience", "200", "--lr", "3e-3", "--no-progress"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
                            preexec_fn=_ctrl_c_as_in_a_terminal)
    seen = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # type: ignore[union-attr]
        seen.append(line)
        if "epoch 1/200" in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)  # generous: the shared test machine can be very loaded
    assert proc.returncode == 130, "".join(seen) + stderr
    assert "interrupted: wrote the best epoch so far" in stderr
    assert out.exists() and [n.op_type for n in load_model(out).graph]
