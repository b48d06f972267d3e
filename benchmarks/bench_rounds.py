"""Re-time the MiniLM models of the pipeline benchmark in several side-by-side rounds (medians and ranges).

Run:  python -m benchmarks pipeline --only minilm-ts   (and/or --only minilm; writes the models)
      python -m benchmarks rounds [--rounds 5] [--threads 2] [--out artifacts/benchmarks]

One ``compare_many`` run is one sample of a noisy machine; this times the same files again,
``--rounds`` times, and quotes the median and the range of each ratio. For each export found
under ``OUT/pipeline/{minilm,minilm_ts}``: fp32 (``minilm.onnx``), ``small.onnx`` and ONNX
Runtime's ``quantize_dynamic`` default (``ort_dynamic.onnx``), all in one round-robin run per
round, on three feeds: the first sentence (batch 1) and the first 8 (batch 8) of the pipeline
benchmark's 200 held-out test sentences, padded to 64 tokens as there (28 % and 34 % real
tokens), and 8 rows of 64 real tokens (``b8 unpadded``: what a model gains without padding to
skip). Ratio = fp32 median / model median. Writes ``OUT/rounds.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import environment, parser as benchmark_parser, write_results

_EXPORTS = {"minilm": "dynamo export (embedding)", "minilm_ts": "TorchScript export (last_hidden_state)"}
_MODELS = {"fp32": "minilm.onnx", "small": "small.onnx", "ORT quantize_dynamic (defaults)": "ort_dynamic.onnx"}


def _feeds() -> dict[str, dict[str, np.ndarray]]:
    from onnx_compress.samples import minilm

    test = minilm.text_dataset(minilm.sentences(600)[400:600], sequence=64).inputs
    rng = np.random.default_rng(0)
    unpadded = {"input_ids": rng.integers(1000, 20000, (8, 64)).astype(np.int64),
                "attention_mask": np.ones((8, 64), np.int64)}
    return {"b1": {k: v[:1] for k, v in test.items()}, "b8": {k: v[:8] for k, v in test.items()},
            "b8 unpadded": unpadded}


def _rounds(paths: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    from onnx_compress.runtime import Runner, SessionSettings, compare_many

    session = SessionSettings(provider="cpu", intra_op_threads=args.threads)
    runners = [Runner(path, session) for path in paths.values()]
    out: dict[str, Any] = {}
    for case, feeds in _feeds().items():
        feeds = {name: array for name, array in feeds.items() if name in {spec.name for spec in runners[0].input_specs}}
        ratios: list[list[float]] = []
        for index in range(args.rounds):
            medians = [lat.median_ms for lat in compare_many(runners, feeds, runs=100 if case == "b1" else 40)]
            ratios.append([medians[0] / m for m in medians])
            print(f"  {case} round {index + 1}: " + "  ".join(
                f"{name} {m:.2f} ms ({r:.2f}x)" for name, m, r in zip(paths, medians, ratios[-1])), flush=True)
        out[case] = {name: {"median": statistics.median(col), "low": min(col), "high": max(col), "all": list(col)}
                     for name, col in zip(paths, zip(*ratios))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("rounds", __doc__)
    parser.add_argument("--rounds", type=int, default=5, help="side-by-side rounds (default 5)")
    args = parser.parse_args(argv)
    from onnx_compress.table import format_table

    results: dict[str, Any] = {"environment": environment(), "rounds": args.rounds}
    for key, title in _EXPORTS.items():
        folder = args.out.resolve() / "pipeline" / key
        paths = {name: folder / file for name, file in _MODELS.items()}
        if not all(path.exists() for path in paths.values()):
            print(f"{title}: no models under {folder} (run `python -m benchmarks pipeline` first); skipped")
            continue
        print(f"\nall-MiniLM-L6-v2, {title}: {args.rounds} side-by-side rounds, ratio = fp32 median / model median")
        results[key] = _rounds(paths, args)
        rows = [[case, *(f"{r['median']:.2f}x ({r['low']:.2f}-{r['high']:.2f})" for r in row.values())]
                for case, row in results[key].items()]
        print(format_table(["feed", *paths], rows))
    if not any(key in results for key in _EXPORTS):
        return 2
    write_results(args.out, "rounds", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
