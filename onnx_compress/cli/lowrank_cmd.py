"""``onnx-compress lowrank``: low-rank factorization of MatMul, Gemm and Conv weights."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit
from onnx_compress.cli.normalize_note import growth_warning, normalize_lines
from onnx_compress.table import format_table, human_bytes

__all__ = ["register"]

_DESCRIPTION = """\
Replace each large MatMul / Gemm / Conv weight W (K x N) by two factors A (K x r) and B (r x N)
from a truncated SVD: one layer becomes two thinner ones (a Conv becomes a k x k Conv to r
channels and a 1x1 Conv). A layer is factored only when r (K + N) < K N, i.e. when it saves
MACs and bytes; every other layer is listed with the reason it was left alone. The model is
normalized first (constant folding, shape inference); the input file is never modified.

rank per layer (choose one):
  --energy E       keep the fraction E of W's squared singular values (0.90 .. 0.99 typical)
  --rank-ratio R   keep ceil(R * min(K, N)) singular values
  --max-error X    keep the smallest rank whose relative output error ||XW - XAB|| / ||XW|| on
                   the calibration activations X is at most X (needs --data)

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
    settings: dict[str, Any] = {"min_size": args.min_size, "method": args.method,
                                "exclude": tuple(args.exclude or ())}
    for name in ("energy", "rank_ratio", "max_error"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.batch_size is not None:
        settings["batch_size"] = args.batch_size
    lowrank = LowRank(calibration=args.data, **settings)  # settings are checked before any work

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


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "lowrank", help="factor MatMul/Gemm/Conv weights into two low-rank layers",
                         description=_DESCRIPTION, handler=_lowrank)
    parser.add_argument("model", type=Path, help="the ONNX model to factor (not modified)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the factored model")
    criterion = parser.add_mutually_exclusive_group(required=True)
    criterion.add_argument("--energy", type=float, metavar="E",
                           help="fraction in (0, 1] of W's squared singular values to keep per layer")
    criterion.add_argument("--rank-ratio", type=float, metavar="R",
                           help="fraction in (0, 1] of min(K, N) singular values to keep per layer")
    criterion.add_argument("--max-error", type=float, metavar="X",
                           help="largest relative output error per layer on the calibration data, in [0, 1] (needs --data)")
    parser.add_argument("--data", type=Path, default=None,
                        help="calibration .npz keyed by the model's input names: enables data-aware factoring "
                             "and the output-error report")
    parser.add_argument("--method", choices=["auto", "svd", "whitened", "asvd"], default="auto",
                        help="auto (default): whitened with --data, else svd; svd: plain SVD of W; whitened: SVD "
                             "against the input second moment (SVD-LLM); asvd: per-channel activation scaling (ASVD)")
    parser.add_argument("--min-size", type=int, default=4096, metavar="N",
                        help="leave weights with fewer than N elements alone (default 4096)")
    parser.add_argument("--exclude", action="append", metavar="NODE",
                        help="a node name to leave alone (repeatable)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="calibration samples per ONNX Runtime call (default 32)")
    add_json_flag(parser)
