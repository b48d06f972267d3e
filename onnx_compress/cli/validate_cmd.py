"""compare a candidate model with a reference on data

Run a reference and a candidate model on the same data in ONNX Runtime and compare them. --metric:
  top1     accuracy (%) of the argmax of the first output against the data's 'labels';
           drop = reference accuracy - candidate accuracy, in points; also the agreement (%)
  cosine   mean per-sample cosine similarity of the first outputs (and the minimum); drop = 1 - mean
  max_abs  largest absolute difference over all outputs
  auto     top1 when the data has labels, else cosine (default)

example:
  onnx-compress validate model.onnx quantized.onnx --data test.npz --metric top1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_compress.cli.common import SESSION, Command, arg, emit, session_settings


def _validate(args: argparse.Namespace) -> int:
    from onnx_compress.runtime.validate import validate

    result = validate(args.reference, args.candidate, args.data, args.metric, batch_size=args.batch_size,
                      settings=session_settings(args))
    return emit(args, result.as_dict(), result.table())


COMMANDS = [Command("validate", __doc__, _validate, (
    arg("reference", "the reference (original) ONNX model", type=Path),
    arg("candidate", "the candidate (compressed) ONNX model", type=Path),
    arg("--data", ".npz keyed by input names, plus 'labels' for top1", required=True),
    arg("--metric", "how to compare (default auto: top1 with labels, else cosine)"),
    arg("--batch-size", "samples per ONNX Runtime call", 64),
    "--json"), settings=(SESSION,))]
