"""``onnx-compress quantize``: int8 (static / dynamic), 4-bit weight-only or fp16, with a speed guard."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit, protect_inputs, run_pass
from onnx_compress.setting_cli import add_flags, given

__all__ = ["register", "NOTHING_TO_DO_EXIT"]

#: exit status when the model was left as it is (already quantized, nothing quantizable, slower)
NOTHING_TO_DO_EXIT = 3

_DESCRIPTION = """\
Quantize an ONNX model with ONNX Runtime's quantization tools, choosing the settings from the
model and this CPU, and prove the result: size, speed against the input (interleaved benchmark
on this CPU) and, with --val, the accuracy drop on held-out data.

The model is normalized first (constant folding, shape inference). An explicit --mode is honoured:
static, weight_only and fp16 write the model asked for, with a loud warning and the measured ratio
when this CPU runs it slower (--objective size). --mode auto (or --objective balanced) trades: a
slower model is kept only when its size gain is at least the square of its loss in speed
(4x smaller may cost up to 2x in speed), else the op types that
make it slower are dropped (dynamic ConvInteger, for example) unless --op-types names them.
--mode dynamic (or --objective latency) hands over only a model faster than its input; otherwise
it says why, with the guard's numbers, and writes nothing.
With --val and --max-drop, the nodes most sensitive to quantization are kept in float until the
drop holds (--exclude auto, the default; name nodes with --exclude NODE to keep them float
yourself, add 'auto' to combine). The input model is never modified.

exit status: 0 quantized and written; 3 nothing to do (already quantized, nothing quantizable,
or not what the objective accepts on this CPU), nothing written; 2 bad input.

examples:
  onnx-compress quantize m.onnx -o q.onnx --mode static --data calib.npz --val val.npz --max-drop 0.5
  onnx-compress quantize minilm.onnx -o q.onnx --mode dynamic --val val.npz --metric cosine --max-drop 0.004
  onnx-compress quantize m.onnx -o q4.onnx --mode weight_only --block-size 32
"""


def _quantize(args: argparse.Namespace) -> int:
    from onnx_compress.passes.quantize import Quantize

    protect_inputs(args)
    quantize = Quantize(calibration=args.data, validation=args.val, **given(args, Quantize.Settings))
    normalized, result = run_pass(args, quantize, write_unchanged=False)
    payload: dict[str, Any] = {"input": str(args.model), "output": str(args.output) if result.modified else None,
                               "normalize": normalized.summary(), **result.as_dict()}
    lines = [f"{args.model}: normalized ({normalized.summary()})", *result.lines()]
    lines.append(f"wrote {args.output}" if result.modified else f"{args.output} not written")
    emit(args, payload, "\n".join(lines))
    return 0 if result.modified else NOTHING_TO_DO_EXIT


def _flags(parser: argparse.ArgumentParser) -> None:
    from onnx_compress.passes.quantize.settings import QuantizeSettings

    add_flags(parser, QuantizeSettings, "mode metric max_drop budget_margin per_channel exclude op_types "
              "calibration_method calibration_samples format block_size preprocess smooth guard objective "
              "benchmark_batch threads")


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "quantize", help="int8 / 4-bit / fp16 quantization with a speed guard",
                         description=_DESCRIPTION, handler=_quantize, settings=_flags)
    parser.add_argument("model", type=Path, help="the ONNX model to quantize (never modified)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the quantized model")
    parser.add_argument("--data", type=Path, default=None, metavar="CALIB.npz",
                        help="calibration data (.npz keyed by input names); required for static mode")
    parser.add_argument("--val", type=Path, default=None, metavar="VAL.npz",
                        help="held-out validation data: the accuracy drop is measured on it (never the --data)")
    add_json_flag(parser)
