"""parameters, MACs, size and ops of a model

Show a model's inputs and outputs, parameter count, multiply-accumulates (MACs: Conv, ConvTranspose, Gemm,
MatMul and their quantized forms) of one forward pass at --batch, size on disk and op histogram; a
symbolic axis other than the batch needs a size (--dim sequence=128) for MACs to be counted. For a
transformer encoder it also lists the prunable groups (`prune --heads/--ffn/--layers`) and what the
analysis refused, with the reason. JSON keys: inputs, outputs, params, macs, macs_unknown_nodes,
size_bytes, ops, opsets, transformer (null without encoder layers).

example:
  onnx-compress inspect minilm.onnx --dim sequence=128
"""

from __future__ import annotations

import argparse

from onnx_compress.cli.common import Command, arg, emit, parse_dims


def _inspect(args: argparse.Namespace) -> int:
    from onnx_compress.model_io import load_model
    from onnx_compress.passes.prune.transformer.detect import find_structure, prepare
    from onnx_compress.stats import model_stats

    stats = model_stats(args.model, batch=args.batch, dims=parse_dims(args.dim))
    model = load_model(args.model)
    prepare(model)
    structure = find_structure(model)
    human = stats.table(str(args.model), args.batch) + (f"\n\n{structure.table()}" if structure.layers else "")
    return emit(args, {**stats.as_dict(), "transformer": structure.as_dict() if structure.layers else None}, human)


COMMANDS = [Command("inspect", __doc__, _inspect, (arg("model", "the ONNX model"), "--batch", "--dim", "--json"))]
