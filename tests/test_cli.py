"""The CLI end to end, through the real console script in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from onnx_compress.data import Dataset

SAMPLE = "samples/seed_torch_cnn.py"


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_export_inspect_validate_bench_end_to_end(cli, tmp_path, digits_files):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = tmp_path / "m.onnx"
    exported = _json(cli("export", "torch", f"{root / SAMPLE}:SimpleModel", "--input-shape", "1x1x28x28",
                         "-o", out, "--json"))
    assert exported["input_names"] == ["input"] and exported["max_abs_error"] < 1e-4
    info = _json(cli("inspect", out, "--json"))
    assert info["params"] == 225_034 and info["macs"] == 2_631_040 and info["ops"]["Conv"] == 2
    assert info["size_bytes"] == out.stat().st_size
    score = _json(cli("validate", out, out, "--data", digits_files["NCHW"]["test"], "--metric", "top1", "--json"))
    assert score["drop"] == 0.0 and score["details"]["agreement"] == 100.0
    bench = _json(cli("bench", out, "--vs", out, "--batch", "3", "--runs", "5", "--threads", "1", "--json"))
    assert bench["model_latency"]["batch"] == 3 and bench["model_latency"]["runs"] == 5
    assert bench["speedup"] > 0
    human = cli("inspect", out)
    assert human.returncode == 0 and "MACs (batch 1)" in human.stdout and "Conv" in human.stdout
    side = cli("bench", out, "--vs", out, "--runs", "3", "--warmup", "1")
    assert side.returncode == 0 and "median ms" in side.stdout and "3 interleaved runs" in side.stdout


def test_every_command_explains_its_flags(cli):
    for command in (["export", "torch"], ["export", "keras"], ["export", "saved-model"],
                    ["inspect"], ["validate"], ["bench"]):
        proc = cli(*command, "--help")
        assert proc.returncode == 0
        assert "--json" in proc.stdout
    assert "arbitrary Python code" in cli("export", "torch", "--help").stdout
    assert "--unsafe-load" in cli("export", "keras", "--help").stdout
    from onnx_compress.passes.registry import pass_names

    compress_help = " ".join(cli("compress", "--help").stdout.split())
    assert all(name in compress_help for name in pass_names())  # the recipe pass list is complete
    assert "--smooth auto|off|ALPHA" in cli("quantize", "--help").stdout


def test_every_command_says_what_it_does_with_an_example():
    """The commands are declared (onnx_compress/cli/common.py): each --help has a description with an
    example of that command, and every flag (declared or generated from the settings) has a help text."""
    import argparse

    from onnx_compress.cli.main import build_parser

    def commands(parser: argparse.ArgumentParser, words: list[str]):
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            yield words, parser
        for action in subparsers:
            for name, child in action.choices.items():
                yield from commands(child, [*words, name])

    found = list(commands(build_parser([]), []))
    assert len(found) == 14  # export torch / keras / saved-model and the 11 other commands
    for words, _ in found:
        parser = build_parser(words)  # with the command's generated settings flags
        for word in words:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        example = f"  onnx-compress {' '.join(words)} "
        assert any(line.startswith(example) for line in parser.description.splitlines()), words
        assert len(parser.description.splitlines()) >= 4, words
        for action in parser._actions:
            assert action.help and not action.help.startswith(" "), (words, action.dest)


def test_bad_model_files(cli, tmp_path):
    _one_line_error(cli("inspect", tmp_path / "missing.onnx"), "not found")
    (tmp_path / "text.onnx").write_text("hello, not ONNX")
    _one_line_error(cli("inspect", tmp_path / "text.onnx"))
    (tmp_path / "empty.onnx").write_bytes(b"")
    _one_line_error(cli("inspect", tmp_path / "empty.onnx"), "empty")


def test_truncated_model_and_debug_traceback(cli, tmp_path, torch_seed_onnx):
    data = torch_seed_onnx.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    _one_line_error(cli("inspect", tmp_path / "cut.onnx"))
    assert "Traceback" in cli("inspect", tmp_path / "cut.onnx", "--debug").stderr


def test_bad_data_files_name_the_problem(cli, tmp_path, torch_seed_onnx):
    Dataset({"pixels": np.zeros((4, 1, 28, 28), np.float32)}).save(tmp_path / "wrong_name.npz")
    _one_line_error(cli("validate", torch_seed_onnx, torch_seed_onnx, "--data", tmp_path / "wrong_name.npz"),
                    "missing model input(s) ['input']", "input: float32[batchx1x28x28]")
    Dataset({"input": np.zeros((4, 1, 14, 14), np.float32)}).save(tmp_path / "wrong_shape.npz")
    _one_line_error(cli("validate", torch_seed_onnx, torch_seed_onnx, "--data", tmp_path / "wrong_shape.npz"),
                    "axis 2 must be 28")
    Dataset({"input": np.zeros((4, 1, 28, 28), np.float64)}).save(tmp_path / "wrong_dtype.npz")
    _one_line_error(cli("validate", torch_seed_onnx, torch_seed_onnx, "--data", tmp_path / "wrong_dtype.npz"),
                    "float64")
    _one_line_error(cli("validate", torch_seed_onnx, torch_seed_onnx, "--data", tmp_path / "none.npz"),
                    "not found")


def test_bad_export_sources_leave_nothing(cli, tmp_path, tmp_path_factory):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = tmp_path / "out.onnx"
    source = tmp_path_factory.mktemp("source") / "model.py"  # a user's file that defines its model
    source.write_text("import torch\n\n\nclass Tiny(torch.nn.Module):\n    def forward(self, x):\n        return x\n")
    _one_line_error(cli("export", "torch", f"{source}:NoSuchFactory", "--input-shape", "1x1x28x28",
                        "-o", out), "NoSuchFactory", "Tiny")
    _one_line_error(cli("export", "torch", f"{tmp_path / 'nope.py'}:Model", "--input-shape", "1x1x28x28",
                        "-o", out), "not found")
    _one_line_error(cli("export", "torch", f"{root / SAMPLE}:SimpleModel", "--input-shape", "1x1x20x20",
                        "-o", out), "failed on the example inputs")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blocked, command, extra", [
    ("torch", ["export", "torch", "x.py:M", "--input-shape", "1x3"], "torch"),
    ("tensorflow", ["export", "keras", "m.keras"], "tensorflow"),
])
def test_missing_optional_framework_names_the_extra(tmp_path, blocked, command, extra):
    # Simulate an install without the optional framework: the import of it fails.
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; sys.modules['keras'] = None\n"
        "from onnx_compress.cli.main import main\n"
        f"sys.exit(main({command + ['-o', str(tmp_path / 'o.onnx')]!r}))"
    )
    (tmp_path / "x.py").write_text("M = None\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    _one_line_error(proc, f'pip install "onnx-compress[{extra}]"')
