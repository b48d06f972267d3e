"""Every command leaves its input files byte-for-byte unchanged and refuses to write over them.

The model is stored with external data, so the data file is checked too. The commands run
in-process through the CLI's ``main`` (the same code path as the console script, without a
subprocess per command).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from onnx_compress.cli.main import main
from onnx_compress.model_io import load_model, save_model

ROOT = Path(__file__).resolve().parents[2]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(torch_seed_onnx, digits_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    save_model(load_model(torch_seed_onnx), folder / "m.onnx", external_data=True)
    assert (folder / "m.onnx.data").is_file()
    for split in ("calib", "val"):
        (folder / f"{split}.npz").write_bytes(Path(digits_files["NCHW"][split]).read_bytes())
    # a PyTorch student for ``distill`` (the file is an input too: it is hashed like the others)
    (folder / "student.py").write_text(
        "import torch\n\n\ndef make_student():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))\n")
    return folder


def _commands(inp: Path, out: Path) -> dict[str, list[str]]:
    m = str(inp / "m.onnx")
    calib, val = str(inp / "calib.npz"), str(inp / "val.npz")
    return {
        "inspect": ["inspect", m, "--json"],
        "validate": ["validate", m, m, "--data", val, "--json"],
        "bench": ["bench", m, "--vs", m, "--runs", "3", "--warmup", "1", "--json"],
        "quantize": ["quantize", m, "-o", str(out / "q.onnx"), "--mode", "dynamic", "--json"],
        "prune": ["prune", m, "-o", str(out / "p.onnx"), "--structured", "0.5", "--json"],
        "lowrank": ["lowrank", m, "-o", str(out / "l.onnx"), "--rank-ratio", "0.5", "--json"],
        "compress": ["compress", m, "-o", str(out / "c.onnx"), "--preset", "small", "--data", calib,
                     "--val", val, "--max-drop", "1", "--bench-runs", "3", "--search-steps", "2", "--json"],
        "deploy": ["deploy", m, "--triton", str(out / "repo"), "--name", "seed", "--json"],
        "recover": ["recover", m, "--teacher", m, "--data", calib, "--val", val, "--epochs", "1", "--no-progress",
                    "-o", str(out / "r.onnx"), "--json"],
        "distill": ["distill", "--teacher", m, "--student", f"{inp / 'student.py'}:make_student", "--data", calib,
                    "--val", val, "--epochs", "1", "--no-progress", "-o", str(out / "s.onnx"), "--json"],
    }


# ``serve`` runs until Ctrl-C: tests/runtime/test_serve.py (the CLI test) hashes the model it serves
@pytest.mark.parametrize("command", ["inspect", "validate", "bench", "quantize", "prune", "lowrank",
                                     "compress", "deploy", "distill", "recover"])
def test_command_leaves_inputs_unchanged(command, inputs, tmp_path, capsys):
    before = _digest(inputs)
    status = main(_commands(inputs, tmp_path)[command])
    captured = capsys.readouterr()
    assert status in (0, 3), captured.err  # 3: quantize had nothing to do, recover no better epoch
    assert _digest(inputs) == before


@pytest.mark.parametrize("command", ["quantize", "prune", "lowrank", "compress", "distill", "recover"])
def test_output_over_the_input_is_refused(command, inputs, capsys):
    before = _digest(inputs)
    args = _commands(inputs, inputs)[command]
    args[args.index("-o") + 1] = str(inputs / "m.onnx")
    assert main(args) == 2
    assert "overwrite the input" in capsys.readouterr().err
    assert _digest(inputs) == before


def test_export_leaves_the_source_file_unchanged(tmp_path, capsys):
    source = tmp_path / "seed_torch_cnn.py"
    source.write_bytes((ROOT / "samples" / "seed_torch_cnn.py").read_bytes())
    before = _digest(tmp_path)
    assert main(["export", "torch", f"{source}:SimpleModel", "--input-shape", "1x1x28x28",
                 "-o", str(tmp_path / "out.onnx")]) == 0
    after = _digest(tmp_path)
    assert after["seed_torch_cnn.py"] == before["seed_torch_cnn.py"]
