"""latency of a model, optionally side by side with another

ONNX Runtime latency after warm-up runs: median and p90 ms per call, and samples/s, on the first --batch
samples of --data or random inputs (--dim NAME=SIZE for a symbolic axis). With --vs OTHER both models run
in one interleaved loop (A B B A ...), so machine load hits both alike, and the speedup of MODEL over
OTHER (median OTHER / median MODEL) is reported: quote ratios from one run, not numbers from two.

examples:
  onnx-compress bench model.onnx --batch 8 --threads 2
  onnx-compress bench small.onnx --vs model.onnx --data test.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_compress.cli.common import SESSION, Command, arg, emit, parse_dims, session_settings
from onnx_compress.table import format_table


def _bench(args: argparse.Namespace) -> int:
    from onnx_compress.data import Dataset, load_data, synthetic_inputs
    from onnx_compress.errors import DataError
    from onnx_compress.runtime.benchmark import benchmark, compare
    from onnx_compress.runtime.session import Runner

    settings = session_settings(args)
    runner = Runner(args.model, settings)
    if args.data is None:
        feeds = synthetic_inputs(runner.input_specs, batch=args.batch, dims=parse_dims(args.dim))
    else:
        data = load_data(args.data)
        data.check_against(runner.input_specs)
        if len(data) < args.batch:
            raise DataError(f"--data has {len(data)} samples, fewer than --batch {args.batch}")
        feeds = {spec.name: data.inputs[spec.name][: args.batch] for spec in runner.input_specs}
    header, note = ["model", "median ms", "p90 ms", "samples/s"], f"batch {args.batch}, {runner.providers[0]}"
    if args.vs is None:
        latency = benchmark(runner, feeds, runs=args.runs, warmup=args.warmup)
        table = format_table(header, [[str(args.model), latency.median_ms, latency.p90_ms, latency.throughput]])
        return emit(args, {"model": str(args.model), "provider": runner.providers[0], **latency.as_dict()},
                    table + f"\n({note}, {args.runs} runs)")
    other = Runner(args.vs, settings)
    Dataset(inputs=feeds).check_against(other.input_specs, what=f"inputs for {args.vs}")
    result = compare(other, runner, feeds, runs=args.runs, warmup=args.warmup)
    payload = {"model": str(args.model), "vs": str(args.vs), "provider": runner.providers[0],
               "model_latency": result.b.as_dict(), "vs_latency": result.a.as_dict(), "speedup": result.speedup}
    rows = [[str(path), t.median_ms, t.p90_ms, t.throughput] for path, t in ((args.model, result.b), (args.vs, result.a))]
    verdict = "faster" if result.speedup >= 1 else "SLOWER"
    return emit(args, payload, format_table(header, rows) + f"\n{args.model} is {result.speedup:.2f}x {verdict} than "
                f"{args.vs} (speedup = median {args.vs.name} / median {args.model.name}; {note}, {args.runs} "
                "interleaved runs)")


COMMANDS = [Command("bench", __doc__, _bench, (
    arg("model", "the ONNX model to time"),
    arg("--vs", "a second model timed in the same interleaved loop; reports the speedup", type=Path, metavar="OTHER"),
    arg("--batch", "samples per call"),
    arg("--data", ".npz to take the inputs from (default: random)"),
    arg("--dim", "size of a symbolic input axis for random inputs, e.g. sequence=64"),
    arg("--runs", "timed runs per model", 100),
    arg("--warmup", "untimed warm-up runs per model", 10),
    "--json"), settings=(SESSION,))]
