"""train a PyTorch student from an ONNX teacher, export it

Knowledge distillation: train a PyTorch student to imitate an ONNX teacher (run once over the
training data by ONNX Runtime, so the teacher may come from Keras, PyTorch or anything else that
exports ONNX), then export the student to ONNX with a parity check.

--student is FILE.py:FACTORY, where FACTORY is a function returning the student torch.nn.Module
(freshly initialised, or with weights the function loads itself) or an nn.Module class
constructible without arguments. WARNING: FILE.py is imported and run as Python code: only use
files you trust. onnx_compress.training.narrow.torch.narrow_student(teacher_module, 0.5) builds a
half-width copy of a plain CNN/MLP, e.g. as the body of FACTORY.

loss (per batch; z = outputs as logits or log-probabilities, y = labels):
  (1 - alpha) * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))  +  alpha * CE(z_student, y)
  --alpha 0 needs no labels (pure distillation); --alpha 1 ignores the teacher.
Outputs that are probabilities (a softmax at the end) or log-probabilities (log_softmax) are
detected and taken to log space; --teacher-outputs / --student-outputs say it explicitly.

data: .npz keyed by the student's input names, plus 'labels' (needed when alpha > 0). A teacher
with another input layout gets the data transposed: --teacher-layout NCHW->NHWC for a teacher
exported from Keras (NHWC images) and a PyTorch student (NCHW).

The exported student has the data's input names, the output 'output', a dynamic batch axis.

example:
  onnx-compress distill --teacher keras_cnn.onnx --student student.py:make_student \\
      --data train.npz --val val.npz --teacher-layout NCHW->NHWC --epochs 12 -o student.onnx
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import Command, arg, emit
from onnx_compress.errors import ModelLoadError, SettingError
from onnx_compress.setting_cli import given, load
from onnx_compress.table import format_table, human_bytes, human_count

_SETTINGS = "onnx_compress.training.distill.common:DistillSettings"


def _input_order(student: Any, names: list[str]) -> list[str]:
    """The data's arrays in the order of ``forward``'s parameters (export passes them positionally)."""
    params = [p.name for p in inspect.signature(student.forward).parameters.values()]
    if len(names) > 1 and not set(names) <= set(params):
        raise SettingError(f"the data's arrays {names} must be named like the student's forward() parameters {params}")
    return sorted(names, key=params.index) if len(names) > 1 else names


def _distill(args: argparse.Namespace) -> int:
    from onnx_compress.converters.torch.export import export_torch
    from onnx_compress.converters.torch.source import torch_module
    from onnx_compress.data import load_data
    from onnx_compress.model_io import check_output_path, model_files
    from onnx_compress.optional import require
    from onnx_compress.stats import model_stats
    from onnx_compress.training.distill.torch import distill

    # Everything that can be wrong is checked before the training starts.
    if args.teacher.suffix.lower() != ".onnx":
        raise ModelLoadError(f"--teacher must be an .onnx file, got {args.teacher}")
    check_output_path(args.output, model_files(args.teacher))  # missing / unreadable teacher fails here
    data = load_data(args.data)
    val = None if args.val is None else load_data(args.val)
    student = torch_module(args.student, "distilling into a PyTorch student", SettingError)
    order = _input_order(student, list(data.names))
    student, history = distill(args.teacher, student, data, **given(args, load(_SETTINGS)), val_data=val,
                               device=args.device, teacher_inputs=args.teacher_layout,
                               teacher_output=args.teacher_output, progress=not args.no_progress)
    torch = require("torch", "exporting the student")
    example = tuple(torch.from_numpy(data.inputs[name][:1]) for name in order)
    export = export_torch(student, example, args.output, input_names=order, opset=args.opset, atol=args.atol,
                          rtol=args.rtol)
    teacher, student_stats = model_stats(args.teacher), model_stats(args.output)
    payload = {"output": str(args.output), "history": history.as_dict(), "export": export.as_dict()}
    for role, path, stats in (("teacher", args.teacher, teacher), ("student", args.output, student_stats)):
        payload[role] = {"path": str(path), "params": stats.params, "macs": stats.macs, "size_bytes": stats.size_bytes}
    top1 = history.teacher_val_top1
    summary = [
        ["teacher outputs / student outputs", f"{history.teacher_outputs} / {history.student_outputs}"],
        ["device", history.device],
        ["teacher val top-1 (%)", "-" if top1 is None else f"{top1:.2f}"],
        *([f"{what} teacher -> student", f"{show(getattr(teacher, key))} -> {show(getattr(student_stats, key))}"]
          for what, key, show in (("params", "params", human_count), ("MACs", "macs", human_count),
                                  ("size", "size_bytes", human_bytes))),
        ["export parity (max abs error)", f"{export.max_abs_error:.3g}"],
        ["wrote", str(args.output)],
    ]
    return emit(args, payload, history.table() + "\n\n" + format_table(["distill", ""], summary, numeric=False))


COMMANDS = [Command("distill", __doc__, _distill, (
    arg("--teacher", "the teacher ONNX model (not modified)", type=Path, required=True),
    arg("--student", "Python file and the function (or nn.Module class) in it that builds the student; FILE.py is "
        "run as code", required=True, metavar="FILE.py:FACTORY"),
    arg("--data", "training data .npz keyed by the student's input names, plus 'labels'", required=True),
    arg("--val", "held-out .npz evaluated after every epoch (top-1 with labels, agreement with the teacher)"),
    arg("-o", "the student ONNX file to write"),
    arg("--device", "auto (CUDA when torch sees one, else CPU), cpu, cuda or cuda:N (default auto)", "auto"),
    arg("--teacher-layout", "transpose the data for the teacher, e.g. NCHW->NHWC for a teacher exported from Keras",
        metavar="FROM->TO"),
    arg("--teacher-output", "the teacher output holding the class scores (default: its first output)", metavar="NAME"),
    arg("--opset", "ONNX opset of the exported student", 18),
    arg("--atol", "export parity: absolute tolerance (default 1e-4)", 1e-4),
    arg("--rtol", "export parity: tolerance relative to the largest output (default 1e-4)", 1e-4),
    "--no-progress", "--json"),
    settings=((_SETTINGS, "epochs temperature alpha lr batch_size seed teacher_outputs student_outputs"),))]
