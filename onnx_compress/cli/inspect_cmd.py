"""``onnx-compress inspect``: inputs, outputs, parameters, MACs, size and op histogram."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit, parse_dims

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


def _inspect(args: argparse.Namespace) -> int:
    from onnx_compress.model_io import load_model
    from onnx_compress.passes.prune.transformer.detect import find_structure, prepare
    from onnx_compress.stats import model_stats

    stats = model_stats(args.model, batch=args.batch, dims=parse_dims(args.dim))
    human = stats.table(str(args.model), args.batch)
    model = load_model(args.model)
    prepare(model)
    structure = find_structure(model)
    if structure.layers:
        human += "\n\n" + structure.table()
    emit(args, {**stats.as_dict(), "transformer": structure.as_dict() if structure.layers else None}, human)
    return 0


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "inspect", help="parameters, MACs, size and ops of a model",
                         description=_DESCRIPTION, handler=_inspect)
    parser.add_argument("model", type=Path, help="the ONNX model")
    parser.add_argument("--batch", type=int, default=1, help="batch size for the MAC count (default 1)")
    parser.add_argument("--dim", action="append", metavar="NAME=SIZE",
                        help="size of a symbolic input dimension, e.g. sequence=128 (repeatable)")
    add_json_flag(parser)
