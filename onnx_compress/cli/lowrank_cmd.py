"""``onnx-compress lowrank``: low-rank factorization of MatMul, Gemm and Conv weights."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit, normalize_notes, run_pass
from onnx_compress.setting_cli import add_flags, given
from onnx_compress.table import human_bytes

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

    payload = {
        "model": str(args.model),
        "output": str(args.output),
        "size_before": size_before,
        "size_after": size_after,
        **result.as_dict(),
    }
    human = "\n".join(result.lines())
    human += f"; size {human_bytes(size_before)} -> {human_bytes(size_after)}; wrote {args.output}"
    if not result.modified:
        human += "\nno layer was factored: the output is the normalized input model"
    notes = normalize_notes(payload, normalization, size_before, size_after, "the factored model")
    human += "".join(f"\n{line}" for line in notes)
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
