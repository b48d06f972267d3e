"""The commands that measure a model without changing it: inspect, validate, bench."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_compress.cli.common import SESSION, arg, command, emit, from_flags, parse_dims


@command("inspect", """\
parameters, MACs, size and ops of a model

Show a model's inputs and outputs, parameters, multiply-accumulates (MACs: Conv, Gemm, MatMul and their
quantized forms) of one forward pass at --batch, size on disk and op histogram; a symbolic axis other
than the batch needs --dim for MACs to be counted. For a transformer encoder it also lists the groups
`prune --heads/--ffn/--layers` can cut, and what the analysis refused, with the reason.

example:
  onnx-compress inspect minilm.onnx --dim sequence=128
""", (arg("model", "the ONNX model"), "--batch", "--dim"))
def _inspect(args: argparse.Namespace) -> int:
    from onnx_compress.passes.prune.transformer.detect import structure_of
    from onnx_compress.stats import model_stats

    stats = model_stats(args.model, batch=args.batch, dims=parse_dims(args.dim))
    structure = structure_of(args.model)
    human = stats.table(str(args.model), args.batch) + (f"\n\n{structure.table()}" if structure.layers else "")
    return emit(args, {**stats.as_dict(), "transformer": structure.as_dict() if structure.layers else None}, human)


@command("validate", """\
compare a candidate model with a reference on data

Run a reference and a candidate model on the same data in ONNX Runtime and compare them (--metric):
top1 (accuracy % of the first output's argmax against the data's 'labels'; drop in points, and the
agreement %), cosine (mean per-sample cosine similarity of the first outputs; drop = 1 - mean), max_abs
(largest absolute difference over all outputs), auto (top1 with labels, else cosine).

example:
  onnx-compress validate model.onnx quantized.onnx --data test.npz --metric top1
""", (
    arg("reference", "the reference (original) ONNX model", type=Path),
    arg("candidate", "the candidate (compressed) ONNX model", type=Path),
    arg("--data", ".npz keyed by input names, plus 'labels' for top1", required=True),
    arg("--metric", "how to compare (default auto: top1 with labels, else cosine)"),
    arg("--batch-size", "samples per ONNX Runtime call", 64),
), settings=(SESSION,))
def _validate(args: argparse.Namespace) -> int:
    from onnx_compress.runtime.validate import validate

    result = validate(args.reference, args.candidate, args.data, args.metric, batch_size=args.batch_size,
                      settings=from_flags(args, SESSION))
    return emit(args, result.as_dict(), result.table())


@command("bench", """\
latency of a model, optionally side by side with another

ONNX Runtime latency after warm-up runs (median and p90 ms per call, samples/s) on the first --batch
samples of --data, or random inputs. With --vs OTHER both models run in one interleaved loop, so machine
load hits both alike, and the speedup of MODEL over OTHER is reported: quote ratios from one run.

example:
  onnx-compress bench small.onnx --vs model.onnx --data test.npz --threads 2
""", (
    arg("model", "the ONNX model to time"),
    arg("--vs", "a second model timed in the same interleaved loop; reports the speedup", type=Path, metavar="OTHER"),
    arg("--batch", "samples per call"),
    arg("--data", ".npz to take the inputs from (default: random)"),
    arg("--dim", "size of a symbolic input axis for random inputs, e.g. sequence=64"),
    arg("--runs", "timed runs per model", 100),
    arg("--warmup", "untimed warm-up runs per model", 10),
), settings=(SESSION,))
def _bench(args: argparse.Namespace) -> int:
    from onnx_compress.runtime.benchmark import bench_files

    report = bench_files(args.model, args.vs, args.data, batch=args.batch, dims=parse_dims(args.dim), runs=args.runs,
                         warmup=args.warmup, settings=from_flags(args, SESSION))
    return emit(args, report.as_dict(), report.text())


COMMANDS = [_inspect, _validate, _bench]
