"""The training commands: distill (a PyTorch student from an ONNX teacher) and recover (a compressed model
back towards its original)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from onnx_compress.cli.common import NOTHING_TO_DO_EXIT, arg, command, emit, from_flags, protect_inputs

_DISTILL_SETTINGS = "onnx_compress.training.distill.common:DistillSettings"
_EXPORT_SETTINGS = "onnx_compress.converters.settings:ExportSettings"


@command("distill", """\
train a PyTorch student from an ONNX teacher, export it

Knowledge distillation: train a PyTorch student to imitate an ONNX teacher (from Keras, PyTorch or any
exporter), then export it to ONNX with a parity check. --student FILE.py:FACTORY builds the student (e.g.
with onnx_compress.training.narrow.torch.narrow_student(teacher, 0.5)). WARNING: FILE.py is imported and
run as Python code: only use files you trust. Loss: (1 - alpha) T^2 KL(teacher || student at T) + alpha CE.

example:
  onnx-compress distill --teacher keras_cnn.onnx --student student.py:make_student \\
      --data train.npz --val val.npz --teacher-layout NCHW->NHWC --epochs 12 -o student.onnx
""", (
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
    "--no-progress",
), settings=(_DISTILL_SETTINGS, (_EXPORT_SETTINGS, "opset atol rtol")))
def _distill(args: argparse.Namespace) -> int:
    from onnx_compress.training.distill.to_onnx import distill_to_onnx

    result = distill_to_onnx(args.teacher, args.student, args.data, args.output, from_flags(args, _DISTILL_SETTINGS),
                             export=from_flags(args, _EXPORT_SETTINGS),
                             val_data=args.val, device=args.device, teacher_inputs=args.teacher_layout,
                             teacher_output=args.teacher_output, progress=not args.no_progress)
    return emit(args, result.as_dict(), result.table())


@command("recover", """\
distill a compressed model back towards its original

Recovery training: the compressed model (pruned, factored) is trained in PyTorch to reproduce the
original's outputs on --data, as the same ONNX graph; it is scored on --val after every epoch and the best
epoch is kept. Exit status 3 (nothing written) when no epoch beats the compressed model; Ctrl-C writes
the best epoch so far (130). Needs torch; under torchrun it trains with DistributedDataParallel.

example:
  onnx-compress recover pruned.onnx --teacher m.onnx --data train.npz --val val.npz -o recovered.onnx --lr 1e-3
""", (
    arg("model", "the compressed ONNX model (never modified)"),
    arg("--teacher", "the original ONNX model it was cut from", type=Path, required=True),
    arg("--data", "training .npz (inputs; 'labels' optional)", required=True),
    arg("--val", "held-out validation .npz for early stopping", required=True),
    arg("-o", "the recovered ONNX file to write"),
    "--no-progress",
), settings=("onnx_compress.training.recover:RecoverySettings",))
def _recover(args: argparse.Namespace) -> int:
    from onnx_compress.model_io import save_model
    from onnx_compress.training.recover import recover

    protected = protect_inputs(args, args.teacher)
    settings = from_flags(args, "onnx_compress.training.recover:RecoverySettings")
    model, result = recover(args.model, args.teacher, args.data, args.val, settings, progress=not args.no_progress)
    if result.world_size > 1 and os.environ.get("RANK", "0") != "0":
        return 0 if result.improved else NOTHING_TO_DO_EXIT  # under torchrun only rank 0 writes and reports
    if not result.improved:
        report = f"{result.table()}\n\n{result.summary()}; nothing written"
        return emit(args, {"output": None, **result.as_dict()}, report, NOTHING_TO_DO_EXIT)
    save_model(model, args.output, protected=protected)
    note = f"\ninterrupted: wrote the best epoch so far (epoch {result.best_epoch})" if result.interrupted else ""
    sys.stderr.write(note.lstrip("\n") + "\n" if note else "")
    return emit(args, {"output": str(args.output), **result.as_dict()},
                f"{result.table()}\n\n{result.summary()}\nwrote {args.output}{note}", 130 if result.interrupted else 0)


COMMANDS = [_distill, _recover]
