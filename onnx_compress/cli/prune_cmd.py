"""``onnx-compress prune``: structured (channels, neurons) or unstructured (zeros) pruning."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit, parse_dims
from onnx_compress.cli.normalize_note import growth_warning, normalize_lines
from onnx_compress.errors import SettingError
from onnx_compress.table import format_table, human_bytes, human_count

__all__ = ["register"]

_DESCRIPTION = """\
Prune a model and write the result; the input model is never modified.

  --structured R    remove the fraction R of the channels / neurons of every coupled group
                    (Conv filters, Gemm/MatMul output features, transformer FFN neurons) and
                    everything that reads them: the model gets smaller AND faster. Groups the
                    analysis does not fully understand (attention heads, axes normalized by
                    LayerNormalization, unknown ops) and anything reaching the model's inputs or
                    outputs are left untouched, and the output says why.
  --unstructured R  set the fraction R of the smallest weights of Conv/Gemm/MatMul to zero. Dense
                    ONNX Runtime kernels gain NO speed from zeros and the .onnx file keeps its
                    size: what shrinks is the compressed (gzip) file, which is reported.
  --nm N:M          unstructured with a pattern: keep N of every M weights (2:4).
  --heads R, --ffn R, --layers N
                    transformer encoders: remove the fraction R of the attention heads and/or of
                    the FFN neurons of every layer, and/or N whole encoder layers (the residual
                    stream passes through). Heads and neurons are ranked by their contribution on
                    --data (or --head-importance magnitude without data), layers by the output
                    with the layer skipped (--layer-importance skip) or by how little they change
                    the hidden state (cosine). Every cut is checked against the original with the
                    removed heads/neurons zeroed; a layer that does not match is left whole.
  --reconstruct     structured: after cutting, re-fit every layer that read the cut channels
                    (least squares on --data, layer by layer) so that its output matches the
                    original model's; no training needed. Needs --data.

The model is normalized first (constant folding, shape inference; BatchNormalization is kept
for --importance bn). The pruned model is checked with onnx.checker (full check) and run in
ONNX Runtime with the original input/output names and shapes before it is written.

Prints parameters, MACs (at --batch, with --dim for other symbolic axes) and size before and
after, what was cut, and what was left untouched with the reason.

JSON keys: input, output, mode, before, after, result.

examples:
  onnx-compress prune model.onnx -o pruned.onnx --structured 0.5
  onnx-compress prune model.onnx -o pruned.onnx --structured 0.3 --importance activation --data calib.npz
  onnx-compress prune model.onnx -o pruned.onnx --structured 0.5 --reconstruct --data calib.npz
  onnx-compress prune model.onnx -o sparse.onnx --unstructured 0.7
  onnx-compress prune model.onnx -o sparse.onnx --nm 2:4
  onnx-compress prune minilm.onnx -o small.onnx --heads 0.25 --ffn 0.25 --layers 2 --data calib.npz
"""


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a ratio must be a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a ratio must be in [0, 1), got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fraction must be a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction must be in [0, 1], got {text!r}")
    return value


def _layer_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a layer count must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a layer count must be an integer >= 0, got {text!r}")
    return value


def _round_to(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'auto', got {text!r}")
    return value


def _build_pass(args: argparse.Namespace, calibration: Any) -> Any:
    from onnx_compress.passes.prune import PruneStructured, PruneUnstructured
    from onnx_compress.passes.prune.unstructured import parse_nm

    given = [flag for flag, value in (("--structured", args.structured), ("--unstructured", args.unstructured),
                                      ("--nm", args.nm)) if value is not None]
    transformer = [flag for flag, value in (("--heads", args.heads), ("--ffn", args.ffn), ("--layers", args.layers))
                   if value is not None]
    if transformer:
        if given:
            raise SettingError(f"{' / '.join(transformer)} cannot be combined with {' / '.join(given)}")
        from onnx_compress.passes.prune.transformer import PruneTransformer

        return PruneTransformer(heads=args.heads or 0.0, ffn=args.ffn or 0.0, layers=args.layers or 0,
                                importance=args.head_importance, layer_importance=args.layer_importance,
                                head_scope=args.head_scope, reconstruct=args.reconstruct, calibration=calibration)
    if not given:
        raise SettingError("choose what to prune: --structured R, --unstructured R, --nm N:M, "
                           "or --heads R / --ffn R / --layers N")
    if args.structured is not None:
        if len(given) > 1:
            raise SettingError(f"--structured cannot be combined with {' / '.join(given[1:])}")
        if args.importance == "activation" and calibration is None:
            raise SettingError("--importance activation needs calibration data: --data calib.npz")
        if args.reconstruct and calibration is None:
            raise SettingError("--reconstruct needs calibration data: --data calib.npz")
        return PruneStructured(ratio=args.structured, scope=args.scope, importance=args.importance,
                               round_to=args.round_to, protect=tuple(args.protect or ()),
                               reconstruct=args.reconstruct, calibration=calibration)
    if args.reconstruct:
        raise SettingError("--reconstruct works with --structured or --heads/--ffn only")
    nm = parse_nm(args.nm)
    ratio = args.unstructured
    if nm is not None and ratio is not None:
        if abs(ratio - (1 - nm[0] / nm[1])) > 1e-9:
            raise SettingError(f"--nm {args.nm} sets the sparsity to {1 - nm[0] / nm[1]:g}; drop --unstructured {ratio:g}")
        ratio = None
    return PruneUnstructured(ratio=ratio, nm=nm, scope=args.scope, protect=tuple(args.protect or ()),
                             protect_first_last=not args.prune_first_last)


def _transformer_table(result: Any) -> str:
    """Per encoder layer: what was cut (heads, FFN neurons, the whole layer) and why not."""

    def width(before: int | None, after: int | None) -> str:
        if before is None:
            return ""
        return f"{before}" if after == before else f"{before} -> {after if after is not None else 0}"

    rows = [[layer.index, layer.status, width(layer.heads_before, layer.heads_after),
             width(layer.ffn_before, layer.ffn_after), "" if layer.score is None else f"{layer.score:.4f}",
             layer.reason] for layer in result.layers]
    text = format_table(["layer", "status", "heads", "FFN neurons", "layer score", "reason"], rows)
    for layer in result.reconstruction:
        if layer.status == "refit":
            text += f"\nreconstructed {layer.node}: output error {layer.error_before:.4f} -> {layer.error_after:.4f}"
    for note in result.notes:
        text += f"\nnote: {note}"
    return text


def _change(before: float, after: float) -> str:
    return f"{(after - before) / before:+.1%}" if before else ""


def _prune(args: argparse.Namespace) -> int:
    from onnx_compress.data import load_data
    from onnx_compress.model_io import check_output_path, load_model, model_files, save_model
    from onnx_compress.passes import Normalize
    from onnx_compress.passes.prune import PruneStructuredResult
    from onnx_compress.stats import model_stats

    check_output_path(args.output, protected=model_files(args.model))
    calibration = load_data(args.data) if args.data is not None else None
    prune_pass = _build_pass(args, calibration)
    dims = parse_dims(args.dim)
    model = load_model(args.model)
    before = model_stats(args.model, batch=args.batch, dims=dims)
    normalization = Normalize(fold_batchnorm=args.importance != "bn")(model)
    result = prune_pass(normalization.model)
    save_model(result.model, args.output, protected=model_files(args.model))
    after = model_stats(args.output, batch=args.batch, dims=dims)

    from onnx_compress.passes.prune.transformer import PruneTransformerResult

    structured = isinstance(result, PruneStructuredResult)
    transformer = isinstance(result, PruneTransformerResult)
    rows: list[list[Any]] = [
        ["params", f"{before.params:,}", f"{after.params:,}", _change(before.params, after.params)],
        [f"MACs (batch {args.batch})", f"{before.macs:,}", f"{after.macs:,}", _change(before.macs, after.macs)],
        ["size", human_bytes(before.size_bytes), human_bytes(after.size_bytes), _change(before.size_bytes, after.size_bytes)],
    ]
    if not structured and not transformer and result.compressed_before and result.compressed_after:
        rows.append(["gzip size", human_bytes(result.compressed_before), human_bytes(result.compressed_after),
                     _change(result.compressed_before, result.compressed_after)])
    human = format_table([str(args.model), "before", "after", "change"], rows)
    if before.macs_unknown_nodes:
        human += (f"\nMACs unknown for {len(before.macs_unknown_nodes)} nodes with symbolic shapes: "
                  "give their sizes with --dim NAME=SIZE")
    if transformer:
        human += "\n\n" + _transformer_table(result)
    elif structured:
        cut = [[g.name, ", ".join(f"{b} -> {a}" for b, a in g.widths.values()), g.importance]
               for g in result.pruned]
        if cut:
            human += "\n\n" + format_table(["cut group (producers)", "output channels", "importance"], cut)
        if result.reconstruction:
            def error(value: float | None) -> str:
                return "" if value is None else f"{value:.4f}"

            refit = [[layer.node, layer.status, f"{layer.rows:,}" if layer.rows else "", error(layer.error_before),
                      error(layer.error_after), layer.reason] for layer in result.reconstruction]
            human += "\n\n" + format_table(["reconstructed layer", "status", "rows", "output error before",
                                              "after", "note"], refit)
        if result.untouched:
            human += "\n\nleft untouched (group: reason):"
            for group in result.untouched:
                human += f"\n  {group.name}: {group.reason}"
        for note in result.notes:
            human += f"\nnote: {note}"
    else:
        layers = [[layer.node, human_count(layer.elements), f"{layer.sparsity:.1%}"] for layer in result.layers]
        if layers:
            human += "\n\n" + format_table(["layer", "weights", "sparsity"], layers)
        if result.skipped:
            human += "\n\nleft dense (layer: reason):"
            for layer_name, reason in result.skipped.items():
                human += f"\n  {layer_name}: {reason}"
        human += (f"\n\n{result.sparsity:.1%} of the pruned weights are zero ({result.pattern}). Dense ONNX Runtime "
                  "kernels gain no speed from zeros; the gain is the compressed size.")
    notes = normalize_lines(normalization) + growth_warning(before.size_bytes, after.size_bytes, normalization,
                                                             "the pruned model")
    human += "".join(f"\n{line}" for line in ["", *notes] if notes)
    human += f"\n\nwrote {args.output}"

    def stats(s: Any) -> dict[str, Any]:
        return {"params": s.params, "macs": s.macs, "macs_unknown_nodes": s.macs_unknown_nodes, "size_bytes": s.size_bytes}

    payload = {
        "input": str(args.model),
        "output": str(args.output),
        "mode": "transformer" if transformer else "structured" if structured else "unstructured",
        "before": stats(before),
        "after": stats(after),
        "result": result.as_dict(),
        "normalize": normalization.summary(),
        "warnings": [line for line in notes if line.startswith("WARNING")],
    }
    emit(args, payload, human)
    return 0


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "prune", help="structured (channels) or unstructured (zeros) pruning",
                         description=_DESCRIPTION, handler=_prune)
    parser.add_argument("model", type=Path, help="the ONNX model to prune")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the pruned model")
    parser.add_argument("--structured", type=_ratio, metavar="R",
                        help="remove this fraction of the channels/neurons of every prunable group")
    parser.add_argument("--unstructured", type=_ratio, metavar="R",
                        help="set this fraction of the Conv/Gemm/MatMul weights to zero")
    parser.add_argument("--nm", metavar="N:M", help="unstructured N:M pattern: keep N of every M weights (e.g. 2:4)")
    parser.add_argument("--heads", type=_fraction, metavar="R",
                        help="transformer: remove this fraction of the attention heads of every layer")
    parser.add_argument("--ffn", type=_fraction, metavar="R",
                        help="transformer: remove this fraction of the FFN neurons of every layer")
    parser.add_argument("--layers", type=_layer_count, metavar="N", help="transformer: remove N whole encoder layers")
    parser.add_argument("--head-importance", choices=["contribution", "magnitude"], default="contribution",
                        help="transformer: rank heads and FFN neurons by their contribution on --data (default) "
                             "or by weight magnitude (no data)")
    parser.add_argument("--head-scope", choices=["layer", "global"], default="layer",
                        help="transformer: --heads R of every layer's heads (default) or of all heads ranked "
                             "together (each layer keeps at least one)")
    parser.add_argument("--layer-importance", choices=["skip", "cosine"], default="skip",
                        help="transformer: choose layers by the output with the layer skipped (default) or by "
                             "1 - cos(layer input, layer output); both on --data")
    parser.add_argument("--importance", choices=["l1", "l2", "bn", "activation"], default="l2",
                        help="structured: how channels are ranked: weight L1 / L2 norm (default l2), BatchNorm "
                             "scale, or activation statistics on --data")
    parser.add_argument("--data", type=Path, metavar="CALIB.npz",
                        help="calibration data (.npz keyed by input names) for --importance activation and "
                             "--reconstruct; also used to check the pruned model")
    parser.add_argument("--reconstruct", action="store_true",
                        help="structured: re-fit the layers reading cut channels by least squares on --data "
                             "so that their outputs match the original model's")
    parser.add_argument("--scope", choices=["layer", "global"], default="layer",
                        help="layer: every group (layer) loses the ratio (default); global: one ranking across groups")
    parser.add_argument("--round-to", type=_round_to, default=1, metavar="N|auto",
                        help="structured: round kept widths up to a multiple of N (default 1); 'auto' "
                             "= the CPU's convolution channel block (16 with AVX-512, 8 with AVX2)")
    parser.add_argument("--protect", nargs="+", action="extend", metavar="NODE",
                        help="names of nodes that must stay unchanged (repeatable)")
    parser.add_argument("--prune-first-last", action="store_true",
                        help="unstructured: also prune the first and last layers (kept dense by default)")
    parser.add_argument("--batch", type=int, default=1, help="batch size for the MAC count (default 1)")
    parser.add_argument("--dim", action="append", metavar="NAME=SIZE",
                        help="size of a symbolic input dimension for the MAC count, e.g. sequence=128 (repeatable)")
    add_json_flag(parser)
