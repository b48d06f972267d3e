"""structured (channels) or unstructured (zeros) pruning

Prune a model and write the result (the input is never modified). Choose one of: --structured R (remove
channels / neurons and what reads them: smaller AND faster; groups the analysis does not fully understand
are left untouched, with the reason); --unstructured R or --nm N:M (zeros in the weights: ONNX Runtime's
dense kernels gain NO speed and the .onnx keeps its size; the gzip size shrinks, and is reported); for
transformer encoders --heads R / --ffn R / --layers N (each cut is checked against the original with the
removed heads/neurons zeroed). The model is normalized first (BatchNormalization kept for --importance bn)
and the result checked in ONNX Runtime. Prints parameters, MACs and size before and after, and what was
cut or left with the reason (JSON keys: input, output, mode, before, after, result).

examples:
  onnx-compress prune model.onnx -o pruned.onnx --structured 0.5 --reconstruct --data calib.npz
  onnx-compress prune model.onnx -o sparse.onnx --nm 2:4
  onnx-compress prune minilm.onnx -o small.onnx --heads 0.25 --ffn 0.25 --layers 2 --data calib.npz
"""

from __future__ import annotations

import argparse
from typing import Any

from onnx_compress.cli.common import Command, arg, emit, normalize_notes, parse_dims, protect_inputs, run_pass
from onnx_compress.errors import SettingError
from onnx_compress.setting_cli import given

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
        raise SettingError(f"{' / '.join(first)} cannot be combined with {' / '.join(c for c in cuts if c not in first)}")
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


def _prune(args: argparse.Namespace) -> int:
    from onnx_compress.data import load_data
    from onnx_compress.stats import model_stats

    protect_inputs(args)  # before the work, not after it
    prune_pass = _build_pass(args, load_data(args.data) if args.data is not None else None)
    dims = parse_dims(args.dim)
    before = model_stats(args.model, batch=args.batch, dims=dims)
    normalization, result = run_pass(args, prune_pass, fold_batchnorm=args.importance != "bn")
    after = model_stats(args.output, batch=args.batch, dims=dims)
    mode = prune_pass.name.removeprefix("prune_")
    keys = ("params", "macs", "macs_unknown_nodes", "size_bytes")
    payload = {"input": str(args.model), "output": str(args.output), "mode": mode,
               "before": {key: getattr(before, key) for key in keys}, "after": {key: getattr(after, key) for key in keys},
               "result": result.as_dict()}
    notes = normalize_notes(payload, normalization, before.size_bytes, after.size_bytes, "the pruned model")
    gzip = (result.compressed_before, result.compressed_after) if mode == "unstructured" else None
    human = [before.change_table(after, str(args.model), args.batch, gzip), *result.lines()]
    return emit(args, payload, "\n".join([*human, *(["", *notes] if notes else []), "", f"wrote {args.output}"]))


COMMANDS = [Command("prune", __doc__, _prune, (
    arg("model", "the ONNX model to prune"),
    arg("-o", "where to write the pruned model"),
    arg("--data", "calibration data (.npz keyed by input names) for --importance activation, --reconstruct and the "
        "transformer cuts; also used to check the pruned model", metavar="CALIB.npz"),
    "--batch", arg("--dim", "size of a symbolic input dimension for the MAC count, e.g. sequence=128 (repeatable)"),
    "--json"), settings=(
    ("onnx_compress.passes.prune:PruneStructuredSettings", "ratio scope importance round_to protect reconstruct"),
    ("onnx_compress.passes.prune:PruneUnstructuredSettings", "ratio nm protect_first_last"),
    ("onnx_compress.passes.prune.transformer:PruneTransformerSettings",
     "heads ffn layers importance head_scope layer_importance")))]
