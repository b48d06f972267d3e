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

JSON keys: inputs, outputs, params, macs, macs_unknown_nodes, size_bytes, ops, opsets.
"""


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
    emit(args, stats.as_dict(), human)
    return 0


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "inspect", help="parameters, MACs, size and ops of a model",
                         description=_DESCRIPTION, handler=_inspect)
    parser.add_argument("model", type=Path, help="the ONNX model")
    parser.add_argument("--batch", type=int, default=1, help="batch size for the MAC count (default 1)")
    parser.add_argument("--dim", action="append", metavar="NAME=SIZE",
                        help="size of a symbolic input dimension, e.g. sequence=128 (repeatable)")
    add_json_flag(parser)
