"""``onnx-compress inspect``: inputs, outputs, parameters, MACs, size and op histogram."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit, parse_dims
from onnx_compress.table import format_table, human_bytes, human_count

__all__ = ["register"]

_DESCRIPTION = """\
Show what a model is: its inputs and outputs, parameter count, multiply-accumulates (MACs) of
one forward pass at --batch (default 1), size on disk (with external data) and how many nodes
of each op type it has. MACs count Conv, ConvTranspose, Gemm, MatMul and their quantized forms,
from shapes resolved by ONNX shape inference; a transformer's symbolic sequence axis needs a
size (--dim sequence=128) for MACs to be counted.

For a transformer encoder it also lists the prunable groups (`prune --heads/--ffn/--layers`):
the encoder layers, heads per layer and their size, FFN width, whether a layer can be removed,
and what the analysis refused, with the reason.

JSON keys: inputs, outputs, params, macs, macs_unknown_nodes, size_bytes, ops, opsets, transformer
(null when no encoder layer is found).
"""


def _transformer(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The encoder layers of the model at ``path`` (JSON) and a table, or (None, "")."""
    from onnx_compress.model_io import load_model
    from onnx_compress.passes.prune.transformer.detect import find_structure, prepare

    model = load_model(path)
    prepare(model)
    structure = find_structure(model)
    if not structure.layers:
        return None, ""
    rows = []
    for layer in structure.layers:
        heads = f"{layer.attention.heads} x {layer.attention.head_dim}" if layer.attention else ""
        rows.append([layer.index, heads, layer.ffn.width if layer.ffn else "",
                     "yes" if not layer.depth_reason else "no",
                     "; ".join(r for r in (layer.attention_reason, layer.ffn_reason, layer.depth_reason) if r)])
    text = format_table([f"encoder layer ({structure.form} graph)", "heads x size", "FFN width", "removable",
                         "refused"], rows)
    for note in structure.notes:
        text += f"\nnote: {note}"
    return structure.as_dict(), text


def _inspect(args: argparse.Namespace) -> int:
    from onnx_compress.stats import model_stats

    stats = model_stats(args.model, batch=args.batch, dims=parse_dims(args.dim))
    rows: list[list[Any]] = [
        ["inputs", "; ".join(stats.inputs)],
        ["outputs", "; ".join(stats.outputs)],
        ["params", f"{stats.params:,} ({human_count(stats.params)})"],
        [f"MACs (batch {args.batch})", f"{stats.macs:,} ({human_count(stats.macs)})"],
        ["size", f"{stats.size_bytes:,} bytes ({human_bytes(stats.size_bytes)})"],
        ["opsets", ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in stats.opsets.items())],
    ]
    if stats.macs_unknown_nodes:
        rows.append(["MACs unknown for", ", ".join(stats.macs_unknown_nodes[:10])
                     + (" ..." if len(stats.macs_unknown_nodes) > 10 else "")])
    human = format_table([str(args.model), ""], rows, numeric=False)
    human += "\n\n" + format_table(["op", "count"], [[op, n] for op, n in stats.ops.items()])
    transformer, table = _transformer(args.model)
    if table:
        human += "\n\n" + table
    emit(args, {**stats.as_dict(), "transformer": transformer}, human)
    return 0


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "inspect", help="parameters, MACs, size and ops of a model",
                         description=_DESCRIPTION, handler=_inspect)
    parser.add_argument("model", type=Path, help="the ONNX model")
    parser.add_argument("--batch", type=int, default=1, help="batch size for the MAC count (default 1)")
    parser.add_argument("--dim", action="append", metavar="NAME=SIZE",
                        help="size of a symbolic input dimension, e.g. sequence=128 (repeatable)")
    add_json_flag(parser)
