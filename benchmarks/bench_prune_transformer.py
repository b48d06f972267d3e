"""Transformer pruning: heads, FFN neurons and whole layers of all-MiniLM-L6-v2, both exports.

    python -m benchmarks prune_transformer [--threads 2] [--runs 30] [--exports dynamo,torchscript]
                                           [--recover MODULE:FUNCTION] [--only NAME ...]

For the dynamo export (pooled sentence embedding) and the TorchScript export (opset 17,
per-token ``last_hidden_state``) of the pretrained all-MiniLM-L6-v2 at sequence 64, each cut
of :class:`~onnx_compress.passes.prune.transformer.PruneTransformer` (importance from 200
real calibration sentences, no training): heads 25 / 50 %, FFN 25 / 50 %, layers 6 -> 4 -> 3,
combined points, and the width cuts again with least-squares reconstruction of the output
projections. Per cut: parameters, MACs (batch 1, sequence 64), file size, latency ratio against
the fp32 original at batch 1 and 8 (all models of one export timed side by side in ONE
``compare_many`` run, settled blocks), and the cosine similarity against the original on 200
held-out sentences (mean / min; per token over the attention mask for ``last_hidden_state``).

Recovery (the companion recovery training) plugs in with ``--recover MODULE:FUNCTION``, or
:func:`run` with ``recover=``: a function taking the pruned model's path and returning the
recovered model's path (the 200 calibration sentences lie next to the pruned model as
``calib.npz``; the original fp32 model as ``<export>_fp32.onnx``); its cosine on the held-out
sentences is added as ``recovered_mean`` / ``recovered_min`` next to the numbers before recovery.

ONNX Runtime on CPU, ``--threads`` intra-op threads (default 2). Writes
``artifacts/benchmarks/prune_transformer.json``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import environment, parser as benchmark_parser, write_results


#: (name, PruneTransformer settings)
CUTS: list[tuple[str, dict[str, Any]]] = [
    ("heads 25 %", {"heads": 0.25}),
    ("heads 50 %", {"heads": 0.5}),
    ("FFN 25 %", {"ffn": 0.25}),
    ("FFN 50 %", {"ffn": 0.5}),
    ("layers 6 -> 4", {"layers": 2}),
    ("layers 6 -> 3", {"layers": 3}),
    ("heads 25 % + FFN 25 %", {"heads": 0.25, "ffn": 0.25}),
    ("heads 25 % + FFN 25 % + layers 6 -> 4", {"heads": 0.25, "ffn": 0.25, "layers": 2}),
    ("heads 50 % + reconstruct", {"heads": 0.5, "reconstruct": True}),
    ("FFN 50 % + reconstruct", {"ffn": 0.5, "reconstruct": True}),
    ("heads 25 % + FFN 25 % + reconstruct", {"heads": 0.25, "ffn": 0.25, "reconstruct": True}),
    ("heads 25 % + FFN 25 % + layers 6 -> 4 + reconstruct", {"heads": 0.25, "ffn": 0.25, "layers": 2,
                                                           "reconstruct": True}),
]

Recover = Callable[[Path], Path]


def _load_recover(spec: str) -> Recover:
    module_name, _, function = spec.partition(":")
    if not function:
        raise SystemExit(f"--recover wants MODULE:FUNCTION, got {spec!r}")
    return getattr(importlib.import_module(module_name), function)


def _cosine(reference: Any, candidate: Any, data: Any) -> tuple[float, float]:
    from onnx_compress.passes.prune.transformer.layers import similarity, token_mask

    values = similarity(reference, candidate, token_mask(data))
    return float(values.mean()), float(values.min())


def run_export(export: str, args: argparse.Namespace, recover: Recover | None, folder: Path) -> list[dict[str, Any]]:
    """Every cut of one export, timed side by side with its fp32 original."""
    from onnx_compress.samples import minilm

    import onnx_compress as oc
    from onnx_compress.passes import Normalize
    from onnx_compress.passes.prune.transformer import PruneTransformer
    from onnx_compress.runtime import Runner, SessionSettings, compare_many
    from onnx_compress.stats import model_stats

    settings = SessionSettings(provider="cpu", intra_op_threads=args.threads)
    data = minilm.text_dataset(minilm.sentences(400), sequence=64)
    calib, val = data.subset(slice(0, 200)), data.subset(slice(200, 400))
    calib_file = folder / "calib.npz"
    calib.save(calib_file) if not calib_file.exists() else None
    raw = folder / f"{export}_raw.onnx"
    if export == "dynamo":
        minilm.export_minilm(raw, sequence=64)
    else:
        minilm.export_minilm_torchscript(raw, sequence=64)
    base = Normalize()(oc.load_model(raw)).model
    base_path = folder / f"{export}_fp32.onnx"
    oc.save_model(base, base_path)
    dims = {"sequence": 64, "batch": 1}
    reference = Runner(base_path, settings).run_dataset(val)
    first = next(iter(reference))
    stats = model_stats(base_path, dims=dims)
    rows: list[dict[str, Any]] = [{"export": export, "cut": "fp32", "params": stats.params, "macs": stats.macs,
                                   "size_bytes": stats.size_bytes, "cosine_mean": 1.0, "cosine_min": 1.0,
                                   "seconds": 0.0, "path": str(base_path), "layers": None}]
    for name, cut in CUTS:
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        result = PruneTransformer(calibration=calib, **cut)(base)
        seconds = time.perf_counter() - start
        path = folder / f"{export}_{len(rows)}.onnx"
        oc.save_model(result.model, path)
        stats = model_stats(path, dims=dims)
        got = Runner(path, settings).run_dataset(val)
        mean, low = _cosine(reference[first], got[first], val)
        row = {"export": export, "cut": name, "settings": cut, "params": stats.params, "macs": stats.macs,
               "size_bytes": stats.size_bytes, "cosine_mean": mean, "cosine_min": low, "seconds": seconds,
               "path": str(path), "summary": result.summary(),
               "layers": [{"index": r.index, "status": r.status, "heads": r.heads_after, "ffn": r.ffn_after,
                           "score": r.score} for r in result.layers]}
        if recover is not None:
            recovered = recover(path)
            got = Runner(recovered, settings).run_dataset(val)
            row["recovered_mean"], row["recovered_min"] = _cosine(reference[first], got[first], val)
        print(f"{export:12} {name:52} cosine {mean:.4f} / {low:.4f}  params {stats.params:,}  ({seconds:.0f} s)",
              flush=True)
        rows.append(row)
    for batch in (1, 8):
        feeds = val.take(batch).inputs
        latencies = compare_many([row["path"] for row in rows], feeds, runs=args.runs, warmup=3, settings=settings)
        for row, latency in zip(rows, latencies):
            row[f"b{batch}_ms"] = latency.median_ms
            row[f"b{batch}_speedup"] = latencies[0].median_ms / latency.median_ms
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| export | cut | params | MACs (b1, seq 64) | size | faster b1 | faster b8 | cosine mean / min |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        cosine = f"{row['cosine_mean']:.4f} / {row['cosine_min']:.4f}"
        if "recovered_mean" in row:
            cosine += f" (recovered {row['recovered_mean']:.4f} / {row['recovered_min']:.4f})"
        lines.append(f"| {row['export']} | {row['cut']} | {row['params'] / 1e6:.2f} M | {row['macs'] / 1e6:.0f} M | "
                     f"{row['size_bytes'] / 2**20:.1f} MiB | {row['b1_speedup']:.2f}x | {row['b8_speedup']:.2f}x | "
                     f"{cosine} |")
    return "\n".join(lines)


def run(args: argparse.Namespace, recover: Recover | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"environment": environment(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for export in args.exports.split(","):
            rows = run_export(export, args, recover, Path(tmp))
            results["rows"].extend(rows)
            print("\n" + _table(rows), flush=True)
    return results


def main(argv: list[str]) -> int:
    parser = benchmark_parser("prune_transformer", __doc__)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per model and batch size (default 30)")
    parser.add_argument("--exports", default="dynamo,torchscript", help="dynamo, torchscript or both (default)")
    parser.add_argument("--recover", metavar="MODULE:FUNCTION",
                        help="recovery step: FUNCTION(pruned_path) -> recovered_path (calib.npz and the fp32 "
                             "model lie next to pruned_path)")
    parser.add_argument("--only", nargs="+", metavar="CUT", help="run only these cuts (names as in the table)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    recover = _load_recover(args.recover) if args.recover else None
    results = run(args, recover)
    print("\n" + _table(results["rows"]))
    write_results(args.out, "prune_transformer", results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
