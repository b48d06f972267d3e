"""The commands that run one pass on a model file: prune, lowrank, quantize."""

from __future__ import annotations

import argparse
from typing import Any

from onnx_compress.cli.common import NOTHING_TO_DO_EXIT, arg, command, emit, parse_dims, protect_inputs
from onnx_compress.errors import SettingError
from onnx_compress.setting_cli import given
from onnx_compress.table import human_bytes


_TRANSFORMER = ("--heads", "--ffn", "--layers")


def _build_pass(args: argparse.Namespace, calibration: Any) -> Any:
    """The pass the flags choose; the rules between flags of different passes are checked here."""
    from onnx_compress.passes.prune import PruneStructured, PruneUnstructured
    from onnx_compress.passes.prune.prune_unstructured_pass import parse_nm
    from onnx_compress.passes.prune.transformer import PruneTransformer

    chosen = [flag for flag in ("--structured", "--unstructured", "--nm", *_TRANSFORMER)
              if getattr(args, flag[2:]) is not None]
    transformer = [flag for flag in chosen if flag in _TRANSFORMER]
    cuts = [flag for flag in chosen if flag not in transformer]
    if not chosen:
        raise SettingError("choose what to prune: --structured R, --unstructured R, --nm N:M, "
                           "or --heads R / --ffn R / --layers N")
    if transformer and cuts or len(cuts) > 1 and "--structured" in cuts:
        first = transformer or cuts[:1]
        others = " / ".join(flag for flag in cuts if flag not in first)
        raise SettingError(f"{' / '.join(first)} cannot be combined with {others}")
    if transformer:
        return PruneTransformer(**given(args, PruneTransformer.Settings), calibration=calibration)
    if args.structured is not None:
        needs_data = [flag for flag, asked in (("--importance activation", args.importance == "activation"),
                                                ("--reconstruct", args.reconstruct)) if asked]
        if needs_data and calibration is None:
            raise SettingError(f"{needs_data[0]} needs calibration data: --data calib.npz")
        return PruneStructured(**given(args, PruneStructured.Settings), calibration=calibration)
    if args.reconstruct:
        raise SettingError("--reconstruct works with --structured or --heads/--ffn only")
    nm = parse_nm(args.nm)
    if nm is not None and args.unstructured is not None:
        if abs(args.unstructured - (1 - nm[0] / nm[1])) > 1e-9:
            raise SettingError(f"--nm {args.nm} sets the sparsity to {1 - nm[0] / nm[1]:g}; "
                               f"drop --unstructured {args.unstructured:g}")
        args.unstructured = None
    return PruneUnstructured(**given(args, PruneUnstructured.Settings))


@command("prune", """\
structured (channels) or unstructured (zeros) pruning

Prune a model (never modified) with one of: --structured R (remove channels / neurons and what reads them:
smaller AND faster; groups the analysis does not fully understand are left untouched, with the reason);
--unstructured R or --nm N:M (zeros: ONNX Runtime gains NO speed and the .onnx keeps its size, the gzip
size shrinks); --heads R / --ffn R / --layers N for transformer encoders (each cut checked against the
original). Prints parameters, MACs and size before and after, and what was cut or left, with the reason.

examples:
  onnx-compress prune model.onnx -o pruned.onnx --structured 0.5 --reconstruct --data calib.npz
  onnx-compress prune minilm.onnx -o small.onnx --heads 0.25 --ffn 0.25 --layers 2 --data calib.npz
""", (
    arg("model", "the ONNX model to prune"),
    arg("-o", "where to write the pruned model"),
    arg("--data", "calibration .npz for --importance activation, --reconstruct and the transformer cuts; also used "
        "to check the pruned model", metavar="CALIB.npz"),
    "--batch",
    arg("--dim", "size of a symbolic input dimension for the MAC count, e.g. sequence=128 (repeatable)"),
), settings=("onnx_compress.passes.prune:PruneStructuredSettings",
             "onnx_compress.passes.prune:PruneUnstructuredSettings",
             "onnx_compress.passes.prune.transformer:PruneTransformerSettings"))
def _prune(args: argparse.Namespace) -> int:
    from onnx_compress.data import load_data
    from onnx_compress.single_pass import apply_pass
    from onnx_compress.stats import model_stats

    protect_inputs(args)  # before the work, not after it
    prune_pass = _build_pass(args, load_data(args.data) if args.data is not None else None)
    dims = parse_dims(args.dim)
    before = model_stats(args.model, batch=args.batch, dims=dims)
    run = apply_pass(args.model, prune_pass, args.output, fold_batchnorm=args.importance != "bn")
    result, after = run.result, model_stats(args.output, batch=args.batch, dims=dims)
    mode = prune_pass.name.removeprefix("prune_")
    counts = [{key: getattr(stats, key) for key in ("params", "macs", "macs_unknown_nodes", "size_bytes")}
              for stats in (before, after)]
    payload = {"input": str(args.model), "output": str(args.output), "mode": mode, "before": counts[0],
               "after": counts[1], "result": result.as_dict(), **run.summary("the pruned model")}
    notes = run.notes("the pruned model")
    gzip = (result.compressed_before, result.compressed_after) if mode == "unstructured" else None
    human = [before.change_table(after, str(args.model), args.batch, gzip), *result.lines()]
    return emit(args, payload, "\n".join([*human, *(["", *notes] if notes else []), "", f"wrote {args.output}"]))


_LOWRANK_SETTINGS = "onnx_compress.passes.lowrank.settings:LowRankSettings"


@command("lowrank", """\
factor MatMul/Gemm/Conv weights into two low-rank layers

Replace each large MatMul / Gemm / Conv weight W (K x N) by the factors A (K x r) B (r x N) of a truncated
SVD where r (K + N) < K N; every other layer is listed with the reason. Choose the rank with --energy,
--rank-ratio or --max-error; with --data the factorization is data-aware (whitened SVD) and each layer's
output error is reported. Fewer MACs are not always lower latency: check with `onnx-compress bench --vs`.

example:
  onnx-compress lowrank model.onnx -o small.onnx --max-error 0.05 --data calib.npz
""", (
    arg("model", "the ONNX model to factor (not modified)"),
    arg("-o", "where to write the factored model"),
    arg("--data", "calibration .npz: enables data-aware factoring and the output-error report"),
), settings=((_LOWRANK_SETTINGS, "energy rank_ratio max_error", {"exclusive": True, "required": True}),
             _LOWRANK_SETTINGS))
def _lowrank(args: argparse.Namespace) -> int:
    from onnx_compress.passes.lowrank import LowRank
    from onnx_compress.single_pass import apply_pass

    if args.data is None and args.max_error is not None:
        raise SettingError("--max-error is measured on calibration activations: give --data calib.npz "
                           "(or use --energy / --rank-ratio)")
    if args.data is None and args.method in ("whitened", "asvd"):
        raise SettingError(f"--method {args.method} is data-aware: give --data calib.npz (or use --method svd)")
    lowrank = LowRank(calibration=args.data, **given(args, LowRank.Settings))  # settings are checked before any work
    run = apply_pass(args.model, lowrank, args.output)
    result, size_before, size_after = run.result, run.size_before, run.size_after or 0
    payload = {"model": str(args.model), "output": str(args.output), "size_before": size_before,
               "size_after": size_after, **result.as_dict(), **run.summary("the factored model")}
    lines = [*result.lines()]
    lines[-1] += f"; size {human_bytes(size_before)} -> {human_bytes(size_after)}; wrote {args.output}"
    if not result.modified:
        lines.append("no layer was factored: the output is the normalized input model")
    lines += run.notes("the factored model")
    return emit(args, payload, "\n".join(lines))


@command("quantize", """\
int8 / 4-bit / fp16 quantization with a speed guard

Quantize with ONNX Runtime's tools, the settings chosen from the model and this CPU, and prove the result:
size, speed against the input on this CPU (the guard; --objective says what a smaller but slower result
is worth) and, with --val, the accuracy drop on held-out data; with --max-drop the most sensitive nodes
stay float until the drop holds. Exit status: 0 written; 3 nothing to do (already quantized, nothing
quantizable, or not what the objective accepts on this CPU), nothing written; 2 bad input.

examples:
  onnx-compress quantize m.onnx -o q.onnx --mode static --data calib.npz --val val.npz --max-drop 0.5
  onnx-compress quantize m.onnx -o q4.onnx --mode weight_only --block-size 32
""", (
    arg("model", "the ONNX model to quantize (never modified)"),
    arg("-o", "where to write the quantized model"),
    arg("--data", "calibration data (.npz keyed by input names); required for static mode", metavar="CALIB.npz"),
    arg("--val", "held-out validation data: the accuracy drop is measured on it (never the --data)", metavar="VAL.npz"),
), settings=("onnx_compress.passes.quantize.settings:QuantizeSettings",))
def _quantize(args: argparse.Namespace) -> int:
    from onnx_compress.passes.quantize import Quantize
    from onnx_compress.single_pass import apply_pass

    quantize = Quantize(calibration=args.data, validation=args.val, **given(args, Quantize.Settings))
    run = apply_pass(args.model, quantize, args.output, write_unchanged=False)
    normalized, result = run.normalization, run.result
    payload = {"input": str(args.model), "output": str(args.output) if result.modified else None,
               "normalize": normalized.summary(), **result.as_dict()}
    lines = [f"{args.model}: normalized ({normalized.summary()})", *result.lines(),
             f"wrote {args.output}" if result.modified else f"{args.output} not written"]
    return emit(args, payload, "\n".join(lines), 0 if result.modified else NOTHING_TO_DO_EXIT)


COMMANDS = [_prune, _lowrank, _quantize]
