"""The third-party robustness matrix: every standalone command on every zoo model.

Each cell runs the real CLI in-process (``onnx_compress.cli.main.main``, ``--json``), which
normalizes the model first as ``compress`` does, and is classified:

- ``applied``: the command wrote a model that it changed where it should (quantize: a model
  written; prune --structured: fewer parameters; prune --unstructured: zeros added; lowrank: a
  layer factored);
- ``refused``: the command declined with a reason (exit 3 "nothing to do", a one-line error of
  the ``onnx_compress.errors`` family, or a written model with nothing changed and the reasons
  per layer);
- ``error``: an internal error (exit 1, "unexpected ..."): never acceptable.

Quantize runs with ``--guard off``: the matrix checks that every topology can be transformed;
whether int8 is faster on this CPU is the speed guard's decision, tested elsewhere.

Run ``python tests/zoo/matrix.py --out matrix.md`` for the full table (slow: it exports the Keras
and torch models first).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx

__all__ = ["PASSES", "Cell", "run_cell", "run_matrix", "format_matrix", "calibration_for", "onnx_test_models"]

#: pass label -> CLI arguments after ``MODEL -o OUT``
PASSES: dict[str, list[str]] = {
    "quantize dynamic": ["quantize", "--mode", "dynamic", "--guard", "off"],
    "quantize static": ["quantize", "--mode", "static", "--guard", "off", "--data", "{calib}"],
    "prune --structured": ["prune", "--structured", "0.5"],
    "prune --unstructured": ["prune", "--unstructured", "0.5"],
    "lowrank": ["lowrank", "--energy", "0.9", "--min-size", "1024"],
}

#: ONNX's own test models (opset 9, weights from ConstantOfShape); vgg19 / alexnet / zfnet512 are
#: left out: their 100-400 MB of fully connected weights are too much for a shared test machine
ONNX_LIGHT = ("light_squeezenet", "light_shufflenet", "light_inception_v1", "light_inception_v2",
              "light_densenet121", "light_resnet50")


@dataclasses.dataclass
class Cell:
    model: str
    pass_name: str
    status: str  # applied / refused / error
    detail: str = ""

    def short(self) -> str:
        return self.status if self.status == "applied" else f"{self.status} ({self.detail[:90]})"


def onnx_test_models(names: Iterable[str] = ONNX_LIGHT) -> dict[str, Path]:
    """Paths of the ``light`` test models the installed ``onnx`` package ships."""
    root = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return {name: root / f"{name}.onnx" for name in names}


def calibration_for(path: Path, out: Path, samples: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Random calibration data for ``path``'s non-initializer inputs (symbolic dims: batch from
    ``samples``, others ``size``); an int64 scalar ``sr`` gets 16000."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            arrays[value.name] = np.full((samples,), 16000, dtype=np.int64) if not dims else \
                np.zeros([samples] + [d or 1 for d in dims[1:]], dtype=np.int64)
            continue
        shape = [samples if i == 0 else (d or size) for i, d in enumerate(dims)]
        if dims and dims[0] not in (None, samples):
            shape[0] = dims[0]  # a fixed batch: one batch of it
        arrays[value.name] = rng.random(shape, dtype=np.float32)
    np.savez(out, **arrays)
    return out


def _changed(pass_name: str, payload: dict) -> tuple[bool, str]:
    if pass_name.startswith("quantize"):
        return payload.get("output") is not None, payload.get("nothing_to_do") or ""
    if pass_name == "prune --structured":
        # the normalized model's count: normalization alone (a zero bias folded away) is no pruning
        before, after = payload["result"]["params_before"], payload["result"]["params_after"]
        untouched = [g for g in payload["result"]["groups"] if g["status"] == "untouched"]
        why = "; ".join(f"{g['name']}: {g['reason']}" for g in untouched[:2]) or "no group to cut"
        return after < before, why
    if pass_name == "prune --unstructured":
        layers = payload["result"]["layers"]
        why = "; ".join(f"{k}: {v}" for k, v in list(payload["result"]["skipped"].items())[:2]) or "no eligible weight"
        return any(layer["zeros"] for layer in layers), why
    layers = payload.get("layers", [])
    why = "; ".join(f"{layer['node']}: {layer['reason']}" for layer in layers if not layer["factored"])[:300]
    return any(layer["factored"] for layer in layers), why or "no layer to factor"


def run_cell(model_name: str, path: Path, pass_name: str, calib: Path, workdir: Path) -> Cell:
    """One command on one model, classified (see the module docstring)."""
    from onnx_compress.cli.main import main

    args = [a.replace("{calib}", str(calib)) for a in PASSES[pass_name]]
    output = workdir / f"{model_name}-{pass_name.replace(' ', '_').replace('-', '')}.onnx"
    argv = [args[0], str(path), "-o", str(output), *args[1:], "--json"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
    if code == 1 or any("unexpected" in line for line in errors):
        return Cell(model_name, pass_name, "error", errors[-1] if errors else stderr.getvalue()[-300:])
    if code not in (0, 3):
        return Cell(model_name, pass_name, "refused", errors[-1][7:] if errors else f"exit {code}")
    try:
        payload = json.loads(stdout.getvalue())
    except json.JSONDecodeError:
        return Cell(model_name, pass_name, "error", f"no JSON on stdout: {stdout.getvalue()[-200:]}")
    changed, why = _changed(pass_name, payload)
    if changed:
        return Cell(model_name, pass_name, "applied")
    return Cell(model_name, pass_name, "refused", why)


def run_matrix(models: dict[str, Path], passes: Iterable[str] = tuple(PASSES), workdir: Path | None = None,
               on_cell: Callable[[Cell], None] | None = None) -> list[Cell]:
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="zoo-matrix-") as scratch:
        work = workdir or Path(scratch)
        for name, path in models.items():
            calib = calibration_for(path, work / f"{name}-calib.npz")
            for pass_name in passes:
                cell = run_cell(name, path, pass_name, calib, work)
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell)
                for leftover in work.glob(f"{name}-*.onnx*"):
                    leftover.unlink()
    return cells


def format_matrix(cells: list[Cell]) -> str:
    """A Markdown table (model x pass) and the totals; refusals are listed with their reasons."""
    passes = list(dict.fromkeys(c.pass_name for c in cells))
    models = list(dict.fromkeys(c.model for c in cells))
    by = {(c.model, c.pass_name): c for c in cells}
    mark = {"applied": "applied", "refused": "refused*", "error": "ERROR"}
    lines = ["| model | " + " | ".join(passes) + " |", "|---" * (len(passes) + 1) + "|"]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(mark[by[(model, p)].status] for p in passes) + " |")
    applied = sum(c.status == "applied" for c in cells)
    refused = [c for c in cells if c.status == "refused"]
    errors = [c for c in cells if c.status == "error"]
    lines.append("")
    lines.append(f"{applied} of {len(cells)} pass x model pairs applied ({applied / len(cells):.0%}), "
                 f"{len(refused)} refused with a reason, {len(errors)} internal errors.")
    if refused or errors:
        lines.append("")
        for c in refused + errors:
            lines.append(f"- {c.model} / {c.pass_name}: {c.status}: {c.detail[:200]}")
    return "\n".join(lines)


def zoo_models(folder: Path, *, keras: bool = True, torch: bool = True, onnx_light: bool = True) -> dict[str, Path]:
    """Every zoo model as a file in ``folder`` (exports the Keras and torch ones not there yet)."""
    import graphs

    models: dict[str, Path] = {}
    for name in ("paddle_like_classifier", "paddle_like_detector", "opset9_constant_weights", "if_branch_vad"):
        path = folder / f"{name}.onnx"
        onnx.save(getattr(graphs, name)(), str(path))
        models[name] = path
    if onnx_light:
        models.update(onnx_test_models())
    if torch:
        import torch_models

        for name in torch_models.TORCH_ZOO:
            for dynamo in (False, True):
                label = f"{name}_{'dynamo' if dynamo else 'torchscript'}"
                path = folder / f"{label}.onnx"
                models[label] = path if path.exists() else torch_models.export(name, path, dynamo=dynamo)
    if keras:
        import keras_models

        for name in keras_models.KERAS_ZOO:
            path = folder / f"{name}.onnx"
            models[name] = path if path.exists() else keras_models.export(name, path)
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the third-party robustness matrix")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    parser.add_argument("--no-keras", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--models", type=Path, default=None, help="keep (and reuse) the exported models here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory(prefix="zoo-") as scratch:
        folder = args.models or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        models = zoo_models(folder, keras=not args.no_keras, torch=not args.no_torch)
        cells = run_matrix(models, on_cell=lambda c: print(f"{c.model:40s} {c.pass_name:22s} {c.short()}",
                                                           file=sys.stderr, flush=True))
    table = format_matrix(cells)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
