"""``onnx-compress prune``: structured (channels, neurons) or unstructured (zeros) pruning."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import (add_command, add_json_flag, emit, normalize_notes, parse_dims, protect_inputs,
                                      run_pass)
from onnx_compress.errors import SettingError
from onnx_compress.setting_cli import add_flags, given
from onnx_compress.table import format_table, human_bytes

__all__ = ["register"]

_DESCRIPTION = """\
Prune a model and write the result; the input model is never modified. Choose one:
--structured R (remove channels / neurons and everything that reads them: smaller AND faster;
groups the analysis does not fully understand are left untouched, and the output says why),
--unstructured R or --nm N:M (zeros in the weights: dense ONNX Runtime kernels gain NO speed and
the .onnx keeps its size, what shrinks is the gzip size, which is reported), or, for transformer
encoders, --heads R / --ffn R / --layers N (every cut is checked against the original with the
removed heads/neurons zeroed; a layer that does not match is left whole).

The model is normalized first (BatchNormalization is kept for --importance bn), checked with
onnx.checker and run in ONNX Runtime before it is written. Prints parameters, MACs (at --batch,
with --dim for other symbolic axes) and size before and after, what was cut and what was left
untouched with the reason. JSON keys: input, output, mode, before, after, result.

examples:
  onnx-compress prune model.onnx -o pruned.onnx --structured 0.5 --reconstruct --data calib.npz
  onnx-compress prune model.onnx -o sparse.onnx --nm 2:4
  onnx-compress prune minilm.onnx -o small.onnx --heads 0.25 --ffn 0.25 --layers 2 --data calib.npz
"""

_STRUCTURED = "ratio scope importance round_to protect reconstruct"
_UNSTRUCTURED = "ratio nm protect_first_last"
_TRANSFORMER = "heads ffn layers importance head_scope layer_importance"


def _build_pass(args: argparse.Namespace, calibration: Any) -> Any:
    from onnx_compress.passes.prune import PruneStructured, PruneUnstructured
    from onnx_compress.passes.prune.prune_unstructured_pass import parse_nm
    from onnx_compress.passes.prune.transformer import PruneTransformer

    chosen = [f"--{name}" for name in ("structured", "unstructured", "nm", "heads", "ffn", "layers")
              if getattr(args, name) is not None]
    transformer = [flag for flag in chosen if flag in ("--heads", "--ffn", "--layers")]
    cuts = [flag for flag in chosen if flag not in transformer]
    if not chosen:
        raise SettingError("choose what to prune: --structured R, --unstructured R, --nm N:M, "
                           "or --heads R / --ffn R / --layers N")
    if transformer and cuts or len(cuts) > 1 and "--structured" in cuts:
        first = transformer if transformer else cuts[:1]
        raise SettingError(f"{' / '.join(first)} cannot be combined with {' / '.join(c for c in cuts if c not in first)}")
    if transformer:
        return PruneTransformer(**given(args, PruneTransformer.Settings), calibration=calibration)
    needs_data = [flag for flag, asked in (("--importance activation", args.importance == "activation"),
                                            ("--reconstruct", args.reconstruct)) if asked]
    if args.structured is not None:
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


def _change(before: float, after: float) -> str:
    return f"{(after - before) / before:+.1%}" if before else ""


def _prune(args: argparse.Namespace) -> int:
    from onnx_compress.data import load_data
    from onnx_compress.stats import model_stats

    protect_inputs(args)  # before the work, not after it
    calibration = load_data(args.data) if args.data is not None else None
    prune_pass = _build_pass(args, calibration)
    dims = parse_dims(args.dim)
    before = model_stats(args.model, batch=args.batch, dims=dims)
    normalization, result = run_pass(args, prune_pass, fold_batchnorm=args.importance != "bn")
    after = model_stats(args.output, batch=args.batch, dims=dims)
    mode = prune_pass.name.removeprefix("prune_")

    def stats(s: Any) -> dict[str, Any]:
        return {"params": s.params, "macs": s.macs, "macs_unknown_nodes": s.macs_unknown_nodes, "size_bytes": s.size_bytes}

    payload = {"input": str(args.model), "output": str(args.output), "mode": mode, "before": stats(before),
               "after": stats(after), "result": result.as_dict()}
    notes = normalize_notes(payload, normalization, before.size_bytes, after.size_bytes, "the pruned model")
    rows: list[list[Any]] = [
        ["params", f"{before.params:,}", f"{after.params:,}", _change(before.params, after.params)],
        [f"MACs (batch {args.batch})", f"{before.macs:,}", f"{after.macs:,}", _change(before.macs, after.macs)],
        ["size", human_bytes(before.size_bytes), human_bytes(after.size_bytes), _change(before.size_bytes, after.size_bytes)],
    ]
    if mode == "unstructured" and result.compressed_before and result.compressed_after:
        rows.append(["gzip size", human_bytes(result.compressed_before), human_bytes(result.compressed_after),
                     _change(result.compressed_before, result.compressed_after)])
    human = format_table([str(args.model), "before", "after", "change"], rows)
    if before.macs_unknown_nodes:
        human += (f"\nMACs unknown for {len(before.macs_unknown_nodes)} nodes with symbolic shapes: "
                  "give their sizes with --dim NAME=SIZE")
    lines = [*result.lines(), *(["", *notes] if notes else []), "", f"wrote {args.output}"]
    human += "".join(f"\n{line}" for line in lines)
    emit(args, payload, human)
    return 0


def _flags(parser: argparse.ArgumentParser) -> None:
    from onnx_compress.passes.prune import PruneStructuredSettings, PruneUnstructuredSettings
    from onnx_compress.passes.prune.transformer import PruneTransformerSettings

    add_flags(parser, PruneStructuredSettings, _STRUCTURED)
    add_flags(parser, PruneUnstructuredSettings, _UNSTRUCTURED)
    add_flags(parser, PruneTransformerSettings, _TRANSFORMER)


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "prune", help="structured (channels) or unstructured (zeros) pruning",
                         description=_DESCRIPTION, handler=_prune, settings=_flags)
    parser.add_argument("model", type=Path, help="the ONNX model to prune")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the pruned model")
    parser.add_argument("--data", type=Path, metavar="CALIB.npz",
                        help="calibration data (.npz keyed by input names) for --importance activation, "
                             "--reconstruct and the transformer cuts; also used to check the pruned model")
    parser.add_argument("--batch", type=int, default=1, help="batch size for the MAC count (default 1)")
    parser.add_argument("--dim", action="append", metavar="NAME=SIZE",
                        help="size of a symbolic input dimension for the MAC count, e.g. sequence=128 (repeatable)")
    add_json_flag(parser)
