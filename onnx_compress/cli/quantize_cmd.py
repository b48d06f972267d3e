"""int8 / 4-bit / fp16 quantization with a speed guard

Quantize with ONNX Runtime's quantization tools, the settings chosen from the model and this CPU, and prove
the result: size, speed against the input (interleaved benchmark on this CPU: the guard, --objective says
what a smaller but slower result is worth) and, with --val, the accuracy drop on held-out data; with
--max-drop the nodes most sensitive to quantization stay float until the drop holds (--exclude auto).
The model is normalized first; the input is never modified.

exit status: 0 quantized and written; 3 nothing to do (already quantized, nothing quantizable, or not
what the objective accepts on this CPU), nothing written; 2 bad input.

examples:
  onnx-compress quantize m.onnx -o q.onnx --mode static --data calib.npz --val val.npz --max-drop 0.5
  onnx-compress quantize minilm.onnx -o q.onnx --mode dynamic --val val.npz --metric cosine --max-drop 0.004
  onnx-compress quantize m.onnx -o q4.onnx --mode weight_only --block-size 32
"""

from __future__ import annotations

import argparse

from onnx_compress.cli.common import Command, arg, emit, protect_inputs, run_pass
from onnx_compress.setting_cli import given

#: exit status when the model was left as it is (already quantized, nothing quantizable, slower)
NOTHING_TO_DO_EXIT = 3


def _quantize(args: argparse.Namespace) -> int:
    from onnx_compress.passes.quantize import Quantize

    protect_inputs(args)
    quantize = Quantize(calibration=args.data, validation=args.val, **given(args, Quantize.Settings))
    normalized, result = run_pass(args, quantize, write_unchanged=False)
    payload = {"input": str(args.model), "output": str(args.output) if result.modified else None,
               "normalize": normalized.summary(), **result.as_dict()}
    lines = [f"{args.model}: normalized ({normalized.summary()})", *result.lines(),
             f"wrote {args.output}" if result.modified else f"{args.output} not written"]
    return emit(args, payload, "\n".join(lines), 0 if result.modified else NOTHING_TO_DO_EXIT)


COMMANDS = [Command("quantize", __doc__, _quantize, (
    arg("model", "the ONNX model to quantize (never modified)"),
    arg("-o", "where to write the quantized model"),
    arg("--data", "calibration data (.npz keyed by input names); required for static mode", metavar="CALIB.npz"),
    arg("--val", "held-out validation data: the accuracy drop is measured on it (never the --data)", metavar="VAL.npz"),
    "--json"), settings=(("onnx_compress.passes.quantize.settings:QuantizeSettings", "mode metric max_drop "
                          "budget_margin per_channel exclude op_types calibration_method calibration_samples format "
                          "block_size preprocess smooth guard objective benchmark_batch threads"),))]
