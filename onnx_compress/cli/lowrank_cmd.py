"""factor MatMul/Gemm/Conv weights into two low-rank layers

Replace each large MatMul / Gemm / Conv weight W (K x N) by factors A (K x r) and B (r x N) of a truncated
SVD (a Conv: a k x k Conv to r channels and a 1x1 Conv), only where r (K + N) < K N; every other layer is
listed with the reason. Choose the rank with --energy, --rank-ratio or --max-error. With --data the
factorization is data-aware (whitened SVD, as in SVD-LLM: more accuracy at the same rank) and each layer's
output error is reported. The model is normalized first; the input is never modified. Validate the result
(onnx-compress validate) and time it (onnx-compress bench --vs): fewer MACs are not always lower latency.

examples:
  onnx-compress lowrank model.onnx -o small.onnx --energy 0.95
  onnx-compress lowrank model.onnx -o small.onnx --max-error 0.05 --data calib.npz --json
"""

from __future__ import annotations

import argparse

from onnx_compress.cli.common import Command, arg, emit, normalize_notes, run_pass
from onnx_compress.setting_cli import given
from onnx_compress.table import human_bytes

_SETTINGS = "onnx_compress.passes.lowrank.settings:LowRankSettings"


def _lowrank(args: argparse.Namespace) -> int:
    from onnx_compress.errors import SettingError
    from onnx_compress.passes.lowrank import LowRank
    from onnx_compress.stats import size_on_disk

    if args.data is None and args.max_error is not None:
        raise SettingError("--max-error is measured on calibration activations: give --data calib.npz "
                           "(or use --energy / --rank-ratio)")
    if args.data is None and args.method in ("whitened", "asvd"):
        raise SettingError(f"--method {args.method} is data-aware: give --data calib.npz (or use --method svd)")
    lowrank = LowRank(calibration=args.data, **given(args, LowRank.Settings))  # settings are checked before any work
    normalization, result = run_pass(args, lowrank)
    size_before, size_after = size_on_disk(args.model), size_on_disk(args.output)
    payload = {"model": str(args.model), "output": str(args.output), "size_before": size_before,
               "size_after": size_after, **result.as_dict()}
    lines = [*result.lines()]
    lines[-1] += f"; size {human_bytes(size_before)} -> {human_bytes(size_after)}; wrote {args.output}"
    if not result.modified:
        lines.append("no layer was factored: the output is the normalized input model")
    lines += normalize_notes(payload, normalization, size_before, size_after, "the factored model")
    return emit(args, payload, "\n".join(lines))


COMMANDS = [Command("lowrank", __doc__, _lowrank, (
    arg("model", "the ONNX model to factor (not modified)"),
    arg("-o", "where to write the factored model"),
    arg("--data", "calibration .npz keyed by the model's input names: enables data-aware factoring and the "
        "output-error report"),
    "--json"), settings=((_SETTINGS, "energy rank_ratio max_error", {"exclusive": True, "required": True}),
                         (_SETTINGS, "method min_size exclude batch_size")))]
