"""``onnx-compress bench``: latency of a model, alone or side by side with another."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import (
    add_command,
    add_json_flag,
    add_session_flags,
    emit,
    parse_dims,
    session_settings,
)
from onnx_compress.table import format_table

__all__ = ["register"]

_DESCRIPTION = """\
Measure ONNX Runtime latency: median and 90th percentile milliseconds per call and throughput
(samples/s), after warm-up runs. Inputs are the first --batch samples of --data, or random
inputs of the model's shape (symbolic axes other than the batch need --dim NAME=SIZE).

With --vs OTHER, both models run in one interleaved loop (A B B A ...), so machine load hits
both alike, and the speedup of MODEL over OTHER (median OTHER / median MODEL) is reported.
Quote ratios from one run, not absolute numbers from different runs.

examples:
  onnx-compress bench model.onnx --batch 8 --threads 2
  onnx-compress bench small.onnx --vs model.onnx --data test.npz
"""


def _feeds(args: argparse.Namespace, runner: Any) -> dict[str, Any]:
    from onnx_compress.data import load_data, synthetic_inputs
    from onnx_compress.errors import DataError

    if args.data is not None:
        data = load_data(args.data)
        data.check_against(runner.input_specs)
        if len(data) < args.batch:
            raise DataError(f"--data has {len(data)} samples, fewer than --batch {args.batch}")
        return {spec.name: data.inputs[spec.name][: args.batch] for spec in runner.input_specs}
    return synthetic_inputs(runner.input_specs, batch=args.batch, dims=parse_dims(args.dim))


def _bench(args: argparse.Namespace) -> int:
    from onnx_compress.data import Dataset
    from onnx_compress.runtime.benchmark import benchmark, compare
    from onnx_compress.runtime.session import Runner

    settings = session_settings(args)
    runner = Runner(args.model, settings)
    feeds = _feeds(args, runner)
    header = ["model", "median ms", "p90 ms", "samples/s"]
    if args.vs is None:
        latency = benchmark(runner, feeds, runs=args.runs, warmup=args.warmup)
        payload = {"model": str(args.model), "provider": runner.providers[0], **latency.as_dict()}
        rows = [[str(args.model), latency.median_ms, latency.p90_ms, latency.throughput]]
        human = format_table(header, rows) + f"\n(batch {args.batch}, {runner.providers[0]}, {args.runs} runs)"
        emit(args, payload, human)
        return 0
    other = Runner(args.vs, settings)
    Dataset(inputs=feeds).check_against(other.input_specs, what=f"inputs for {args.vs}")
    result = compare(other, runner, feeds, runs=args.runs, warmup=args.warmup)
    payload = {
        "model": str(args.model),
        "vs": str(args.vs),
        "provider": runner.providers[0],
        "model_latency": result.b.as_dict(),
        "vs_latency": result.a.as_dict(),
        "speedup": result.speedup,
    }
    rows = [
        [str(args.model), result.b.median_ms, result.b.p90_ms, result.b.throughput],
        [str(args.vs), result.a.median_ms, result.a.p90_ms, result.a.throughput],
    ]
    verdict = "faster" if result.speedup >= 1 else "SLOWER"
    human = (
        format_table(header, rows)
        + f"\n{args.model} is {result.speedup:.2f}x {verdict} than {args.vs}"
        + f" (speedup = median {args.vs.name} / median {args.model.name};"
        + f" batch {args.batch}, {runner.providers[0]}, {args.runs} interleaved runs)"
    )
    emit(args, payload, human)
    return 0


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "bench", help="latency of a model, optionally side by side with another",
                         description=_DESCRIPTION, handler=_bench, settings=add_session_flags)
    parser.add_argument("model", type=Path, help="the ONNX model to time")
    parser.add_argument("--vs", type=Path, default=None, metavar="OTHER",
                        help="a second model timed in the same interleaved loop; reports the speedup")
    parser.add_argument("--batch", type=int, default=1, help="samples per call (default 1)")
    parser.add_argument("--data", type=Path, default=None, help=".npz to take the inputs from (default: random)")
    parser.add_argument("--dim", action="append", metavar="NAME=SIZE",
                        help="size of a symbolic input axis for random inputs, e.g. sequence=64")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per model (default 100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs per model (default 10)")
    add_json_flag(parser)
