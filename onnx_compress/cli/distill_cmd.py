"""``onnx-compress distill``: train a PyTorch student from an ONNX teacher, export it to ONNX."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit
from onnx_compress.setting_cli import add_flags, given
from onnx_compress.errors import ModelLoadError, SettingError, one_line
from onnx_compress.table import format_table, human_bytes, human_count

__all__ = ["register"]

_DESCRIPTION = """\
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


def _input_order(student: Any, names: list[str]) -> list[str]:
    """The data's arrays in the order of ``forward``'s parameters (export passes them positionally)."""
    if len(names) == 1:
        return names
    params = [p.name for p in inspect.signature(student.forward).parameters.values()]
    if set(names) <= set(params):
        return sorted(names, key=params.index)
    raise SettingError(
        f"the data's arrays {names} must be named like the student's forward() parameters {params}"
    )


def _distill(args: argparse.Namespace) -> int:
    from onnx_compress.converters.torch.source import torch_module
    from onnx_compress.training.distill.torch import distill
    from onnx_compress.converters.torch.export import export_torch
    from onnx_compress.data import load_data
    from onnx_compress.model_io import check_output_path, model_files
    from onnx_compress.optional import require
    from onnx_compress.stats import model_stats

    # Everything that can be wrong is checked before the training starts.
    if args.teacher.suffix.lower() != ".onnx":
        raise ModelLoadError(f"--teacher must be an .onnx file, got {args.teacher}")
    protected = model_files(args.teacher)  # missing / unreadable teacher fails here
    check_output_path(args.output, protected)
    data = load_data(args.data)
    val = None if args.val is None else load_data(args.val)
    student = torch_module(args.student, "distilling into a PyTorch student", SettingError)
    order = _input_order(student, list(data.names))

    student, history = distill(
        args.teacher, student, data,
        **given(args, _settings_class()), val_data=val, device=args.device, teacher_inputs=args.teacher_layout,
        teacher_output=args.teacher_output, progress=not args.no_progress,
    )
    torch = require("torch", "exporting the student")
    example = tuple(torch.from_numpy(data.inputs[name][:1]) for name in order)
    export = export_torch(student, example, args.output, input_names=order, opset=args.opset,
                          atol=args.atol, rtol=args.rtol)
    teacher_stats, student_stats = model_stats(args.teacher), model_stats(args.output)

    payload = {
        "output": str(args.output),
        "history": history.as_dict(),
        "export": export.as_dict(),
        "teacher": {"path": str(args.teacher), "params": teacher_stats.params, "macs": teacher_stats.macs,
                    "size_bytes": teacher_stats.size_bytes},
        "student": {"path": str(args.output), "params": student_stats.params, "macs": student_stats.macs,
                    "size_bytes": student_stats.size_bytes},
    }
    human = history.table()
    summary = [
        ["teacher outputs / student outputs", f"{history.teacher_outputs} / {history.student_outputs}"],
        ["device", history.device],
        ["teacher val top-1 (%)", "-" if history.teacher_val_top1 is None else f"{history.teacher_val_top1:.2f}"],
        ["params teacher -> student", f"{human_count(teacher_stats.params)} -> {human_count(student_stats.params)}"],
        ["MACs teacher -> student", f"{human_count(teacher_stats.macs)} -> {human_count(student_stats.macs)}"],
        ["size teacher -> student", f"{human_bytes(teacher_stats.size_bytes)} -> {human_bytes(student_stats.size_bytes)}"],
        ["export parity (max abs error)", f"{export.max_abs_error:.3g}"],
        ["wrote", str(args.output)],
    ]
    emit(args, payload, human + "\n\n" + format_table(["distill", ""], summary, numeric=False))
    return 0


def _settings_class() -> Any:
    from onnx_compress.training.distill.common import DistillSettings

    return DistillSettings


def _flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, _settings_class(), "epochs temperature alpha lr batch_size seed teacher_outputs student_outputs")


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "distill", help="train a PyTorch student from an ONNX teacher, export it",
                         description=_DESCRIPTION, handler=_distill, settings=_flags)
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher ONNX model (not modified)")
    parser.add_argument("--student", required=True, metavar="FILE.py:FACTORY",
                        help="Python file and the function (or nn.Module class) in it that builds the student; "
                             "FILE.py is run as code")
    parser.add_argument("--data", type=Path, required=True,
                        help="training data .npz keyed by the student's input names, plus 'labels'")
    parser.add_argument("--val", type=Path, default=None,
                        help="held-out .npz evaluated after every epoch (top-1 with labels, agreement with the teacher)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the student ONNX file to write")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA when torch sees one, else CPU), cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--teacher-layout", default=None, metavar="FROM->TO",
                        help="transpose the data for the teacher, e.g. NCHW->NHWC for a teacher exported from Keras")
    parser.add_argument("--teacher-output", default=None, metavar="NAME",
                        help="the teacher output holding the class scores (default: its first output)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset of the exported student (default 18)")
    parser.add_argument("--atol", type=float, default=1e-4, help="export parity: absolute tolerance (default 1e-4)")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="export parity: tolerance relative to the largest output (default 1e-4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    add_json_flag(parser)
