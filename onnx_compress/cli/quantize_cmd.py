"""``onnx-compress quantize``: int8 (static / dynamic), 4-bit weight-only or fp16, with a speed guard."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit

__all__ = ["register", "NOTHING_TO_DO_EXIT"]

#: exit status when the model was left as it is (already quantized, nothing quantizable, slower)
NOTHING_TO_DO_EXIT = 3

_DESCRIPTION = """\
Quantize an ONNX model with ONNX Runtime's quantization tools, choosing the settings from the
model and this CPU, and prove the result: size, speed against the input (interleaved benchmark
on this CPU) and, with --val, the accuracy drop on held-out data.

modes:
  static       int8 weights and activations; activation ranges calibrated on --data
  dynamic      int8 weights; activation ranges computed at run time (no data needed)
  weight_only  4-bit MatMul/Gemm weights in blocks of --block-size (MatMulNBits)
  fp16         float16 weights and compute, float32 inputs and outputs
  auto         dynamic for transformer-like models, static with --data, else dynamic (default)

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


def _smooth_value(text: str) -> str | float:
    if text in ("auto", "off"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, off or a number in (0, 1), got {text!r}") from None


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {
        "mode": args.mode,
        "per_channel": args.per_channel,
        "calibration_method": args.calibration_method,
        "block_size": args.block_size,
        "preprocess": args.preprocess,
        "smooth": args.smooth,
        "guard": args.guard,
        "objective": args.objective,
        "budget_margin": args.budget_margin,
        "benchmark_batch": args.batch,
        "threads": args.threads,
        "metric": args.metric,
        "max_drop": args.max_drop,
        "format": args.format,
    }
    if args.exclude:
        values["exclude"] = tuple(args.exclude)
    if args.op_types:
        values["op_types"] = tuple(args.op_types)
    if args.calibration_samples is not None:
        values["calibration_samples"] = args.calibration_samples
    return values


def _quantize(args: argparse.Namespace) -> int:
    from onnx_compress.model_io import check_output_path, load_model, model_files, save_model
    from onnx_compress.passes.normalize import Normalize
    from onnx_compress.passes.quantize import Quantize

    protected = model_files(args.model)
    check_output_path(args.output, protected)
    quantize = Quantize(calibration=args.data, validation=args.val, **_settings(args))
    model = load_model(args.model)
    normalized = Normalize()(model)
    result = quantize(normalized.model)
    payload: dict[str, Any] = {"input": str(args.model), "output": None, "normalize": normalized.summary(),
                               **result.as_dict()}
    lines = [f"{args.model}: normalized ({normalized.summary()})", *result.lines()]
    if not result.modified:
        lines.append(f"{args.output} not written")
        emit(args, payload, "\n".join(lines))
        return NOTHING_TO_DO_EXIT
    save_model(result.model, args.output, protected=protected)
    payload["output"] = str(args.output)
    lines.append(f"wrote {args.output}")
    emit(args, payload, "\n".join(lines))
    return 0


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "quantize", help="int8 / 4-bit / fp16 quantization with a speed guard",
                         description=_DESCRIPTION, handler=_quantize)
    parser.add_argument("model", type=Path, help="the ONNX model to quantize (never modified)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the quantized model")
    parser.add_argument("--mode", choices=["auto", "static", "dynamic", "weight_only", "fp16"], default="auto",
                        help="what to quantize (see above; default auto)")
    parser.add_argument("--data", type=Path, default=None, metavar="CALIB.npz",
                        help="calibration data (.npz keyed by input names); required for static mode")
    parser.add_argument("--val", type=Path, default=None, metavar="VAL.npz",
                        help="held-out validation data: the accuracy drop is measured on it (never the --data)")
    parser.add_argument("--metric", choices=["auto", "top1", "cosine", "max_abs"], default="auto",
                        help="accuracy metric on --val: top1 (needs 'labels'), cosine (against the input "
                             "model's outputs), max_abs; auto = top1 with labels, else cosine (default)")
    parser.add_argument("--max-drop", type=float, default=None, metavar="X",
                        help="largest allowed metric drop on --val (points for top1, 1 - mean cosine for "
                             "cosine); with --exclude auto the most sensitive nodes stay float until it holds")
    parser.add_argument("--budget-margin", type=float, default=1.0, metavar="Z",
                        help="standard errors of the measured drop added before it is compared with --max-drop "
                             "(default 1.0, one standard error: the budget then holds beyond the --val samples; "
                             "0 = raw drop)")
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                        help="one scale per output channel of each weight (default on); --no-per-channel: "
                             "one per tensor")
    parser.add_argument("--exclude", action="extend", nargs="+", metavar="NODE", default=None,
                        help="node names to keep in float; 'auto' (the default when not given) keeps the "
                             "most sensitive nodes float within --max-drop")
    parser.add_argument("--op-types", action="extend", nargs="+", metavar="OP", default=None,
                        help="op types to quantize (default: all the mode supports, minus those that make "
                             "the model slower on this CPU)")
    parser.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                        help="static mode: how activation ranges are set from --data (default minmax)")
    parser.add_argument("--calibration-samples", type=int, default=None, metavar="N",
                        help="static mode: use at most N calibration samples (default 512)")
    parser.add_argument("--format", choices=["qdq", "qoperator"], default="qdq",
                        help="static mode: QuantizeLinear/DequantizeLinear pairs (default) or QLinear ops")
    parser.add_argument("--block-size", type=int, default=32, metavar="N",
                        help="weight_only: weights per 4-bit block, a power of two >= 16 (default 32)")
    parser.add_argument("--preprocess", choices=["auto", "ort", "transformer", "none"], default="auto",
                        help="pre-processing before quantizing (default auto: transformer fusions - attention, "
                             "GELU, skip LayerNorm - for transformer-like models, ONNX Runtime's quantization "
                             "pre-processing otherwise)")
    parser.add_argument("--smooth", type=_smooth_value, default="auto", metavar="auto|off|ALPHA",
                        help="activation smoothing (SmoothQuant) before int8: auto (default: transformer-like "
                             "models in dynamic mode with --data and --val, strength chosen on --val), off, "
                             "or a strength in (0, 1)")
    parser.add_argument("--guard", choices=["auto", "drop", "warn", "off"], default="auto",
                        help="speed guard: auto drops op types that make an int8 model slower and warns "
                             "otherwise (default); drop always drops; warn only warns; off skips the benchmark")
    parser.add_argument("--objective", choices=["auto", "size", "latency", "balanced"], default="auto",
                        help="what to pursue when int8 is smaller but slower on this CPU: size (keep it, loud "
                             "warning), latency (only a faster model), balanced (keep it when the size gain is at "
                             "least the square of the slowdown); auto (default): balanced with --mode auto, latency with --mode "
                             "dynamic, size with the other explicit modes")
    parser.add_argument("--batch", type=int, default=8, metavar="N",
                        help="batch size of the speed guard's benchmark (default 8)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime intra-op threads for the benchmark and validation (default: ORT's choice)")
    add_json_flag(parser)
