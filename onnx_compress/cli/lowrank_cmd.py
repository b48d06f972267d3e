"""``onnx-compress lowrank``: low-rank factorization of MatMul, Gemm and Conv weights."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit
from onnx_compress.cli.normalize_note import growth_warning, normalize_lines
from onnx_compress.setting_cli import add_flags, given
from onnx_compress.table import format_table, human_bytes

__all__ = ["register"]

_DESCRIPTION = """\
Replace each large MatMul / Gemm / Conv weight W (K x N) by two factors A (K x r) and B (r x N)
from a truncated SVD: one layer becomes two thinner ones (a Conv becomes a k x k Conv to r
channels and a 1x1 Conv). A layer is factored only when r (K + N) < K N, i.e. when it saves
MACs and bytes; every other layer is listed with the reason it was left alone. The model is
normalized first (constant folding, shape inference); the input file is never modified.

Choose the rank per layer with one of --energy, --rank-ratio, --max-error.

With --data (calibration samples, .npz keyed by input names), the factorization is data-aware:
W is factored against the second moment of each layer's input activations (whitened SVD, as in
SVD-LLM), which keeps more accuracy at the same rank, and each layer's output error on the
calibration data is reported. Without --data, plain SVD. Validate the result on held-out data
(onnx-compress validate) and time it (onnx-compress bench --vs): fewer MACs are not always
lower latency.

examples:
  onnx-compress lowrank model.onnx -o small.onnx --energy 0.95
  onnx-compress lowrank model.onnx -o small.onnx --max-error 0.05 --data calib.npz --json
"""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _lowrank(args: argparse.Namespace) -> int:
    from onnx_compress.errors import SettingError
    from onnx_compress.model_io import check_output_path, load_model, model_files, save_model
    from onnx_compress.passes.lowrank import LowRank
    from onnx_compress.passes.normalize import Normalize
    from onnx_compress.stats import size_on_disk

    if args.data is None and args.max_error is not None:
        raise SettingError("--max-error is measured on calibration activations: give --data calib.npz "
                           "(or use --energy / --rank-ratio)")
    if args.data is None and args.method in ("whitened", "asvd"):
        raise SettingError(f"--method {args.method} is data-aware: give --data calib.npz (or use --method svd)")
    lowrank = LowRank(calibration=args.data, **given(args, LowRank.Settings))  # settings are checked before any work

    protected = model_files(args.model)
    check_output_path(args.output, protected)  # before the work, not after it
    normalization = Normalize()(load_model(args.model))
    result = lowrank(normalization.model)
    save_model(result.model, args.output, protected=protected)
    size_before, size_after = size_on_disk(args.model), size_on_disk(args.output)

    payload = {
        "model": str(args.model),
        "output": str(args.output),
        "size_before": size_before,
        "size_after": size_after,
        **result.as_dict(),
    }
    factored = [[layer.node, layer.op_type, f"{layer.shape[0]}x{layer.shape[1]}", layer.rank,
                 layer.params_before, layer.params_after, _fmt(layer.weight_error), _fmt(layer.output_error)]
                for layer in result.factored if layer.shape is not None]
    human = ""
    if factored:
        human += format_table(["factored", "op", "K x N", "rank", "params", "after", "weight err", "output err"],
                              factored) + "\n\n"
    if result.left_alone:
        human += "left alone:\n" + "".join(f"  {layer.node} ({layer.op_type}): {layer.reason}\n"
                                           for layer in result.left_alone) + "\n"
    human += (f"{result.summary()}\n"
              f"method {result.method}"
              + (f" on {result.calibration_samples} calibration samples" if result.calibration_samples else "")
              + f"; size {human_bytes(size_before)} -> {human_bytes(size_after)}; wrote {args.output}")
    if not result.modified:
        human += "\nno layer was factored: the output is the normalized input model"
    notes = normalize_lines(normalization) + growth_warning(size_before, size_after, normalization,
                                                             "the factored model")
    human += "".join(f"\n{line}" for line in notes)
    payload["normalize"] = normalization.summary()
    payload["warnings"] = [line for line in notes if line.startswith("WARNING")]
    emit(args, payload, human)
    return 0


def _flags(parser: argparse.ArgumentParser) -> None:
    from onnx_compress.passes.lowrank.settings import LowRankSettings

    add_flags(parser, LowRankSettings, "energy rank_ratio max_error", exclusive=True, required=True)
    add_flags(parser, LowRankSettings, "method min_size exclude batch_size")


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "lowrank", help="factor MatMul/Gemm/Conv weights into two low-rank layers",
                         description=_DESCRIPTION, handler=_lowrank, settings=_flags)
    parser.add_argument("model", type=Path, help="the ONNX model to factor (not modified)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the factored model")
    parser.add_argument("--data", type=Path, default=None,
                        help="calibration .npz keyed by the model's input names: enables data-aware factoring "
                             "and the output-error report")
    add_json_flag(parser)
