"""``onnx-compress validate``: score a candidate model against a reference on data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, add_session_flags, emit, session_settings

__all__ = ["register"]

_DESCRIPTION = """\
Run a reference model and a candidate model on the same data in ONNX Runtime and compare them.

metrics:
  top1     accuracy (%) of the argmax of the first output against the data's 'labels' array;
           drop = reference accuracy - candidate accuracy, in points; also the agreement (%)
  cosine   mean per-sample cosine similarity of the first outputs (and the minimum);
           drop = 1 - mean
  max_abs  largest absolute difference over all outputs
  auto     top1 when the data has labels, else cosine (default)

example:
  onnx-compress validate model.onnx quantized.onnx --data test.npz --metric top1
"""


def _validate(args: argparse.Namespace) -> int:
    from onnx_compress.runtime.validate import validate

    result = validate(args.reference, args.candidate, args.data, args.metric,
                      batch_size=args.batch_size, settings=session_settings(args))
    emit(args, result.as_dict(), result.table())
    return 0


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "validate", help="compare a candidate model with a reference on data",
                         description=_DESCRIPTION, handler=_validate, settings=add_session_flags)
    parser.add_argument("reference", type=Path, help="the reference (original) ONNX model")
    parser.add_argument("candidate", type=Path, help="the candidate (compressed) ONNX model")
    parser.add_argument("--data", type=Path, required=True,
                        help=".npz keyed by input names, plus 'labels' for top1")
    parser.add_argument("--metric", choices=["auto", "top1", "cosine", "max_abs"], default="auto",
                        help="how to compare (default auto: top1 with labels, else cosine)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per ONNX Runtime call (default 64)")
    add_json_flag(parser)
