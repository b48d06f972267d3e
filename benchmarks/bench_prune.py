"""Pruning: what structured and unstructured pruning buy on the seed CNNs and on MiniLM.

    python -m benchmarks prune [--threads 2] [--runs 300] [--skip-keras] [--skip-minilm]

Seed CNN (PyTorch, and the Keras one through tf2onnx, NHWC), trained on the digits' train
split, no fine-tuning after pruning:

- structured pruning at ratios 0.25 / 0.5 / 0.75 (``l2`` filter norms, the same with kept
  widths rounded up to multiples of 16, ``activation`` statistics on the calibration
  split, and ``l2`` with ``round_to="auto"`` and least-squares reconstruction on the
  calibration split): parameters, MACs (batch 1), gzip size, ONNX Runtime latency ratio against the
  original measured side by side in the same run (interleaved, batch 1 and batch 32; the
  ratio of medians, and in brackets the ratio of the fastest runs), test top-1;
- unstructured 50 % and 2:4 for contrast: same parameters and latency (dense kernels), smaller
  gzip size.

all-MiniLM-L6-v2 (pretrained, 22.7 M parameters): feed-forward neurons pruned at 0.25 / 0.5
(``l2``, ``activation``, and ``activation`` with reconstruction, on 200 real calibration
sentences); attention and the hidden axis
stay untouched (heads and LayerNorm, see the pruning docs). Parameters, latency ratio at batch
8 x sequence 64, and the cosine of the sentence embeddings against the original on 200
held-out sentences (mean and min).

ONNX Runtime on CPU with ``--threads`` intra-op threads (default 2). Writes
``artifacts/benchmarks/prune.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import parser as benchmark_parser, write_results


RATIOS = (0.25, 0.5, 0.75)


def _top1(model: Any, data: Any, settings: Any) -> float:
    from onnx_compress.runtime import Runner

    out = Runner(model, settings).run_dataset(data)
    return float((next(iter(out.values())).argmax(1) == data.labels).mean() * 100)


def _cnn_rows(name: str, model: Any, splits: Any, args: argparse.Namespace, settings: Any) -> list[dict[str, Any]]:
    from onnx_compress.passes import Normalize, PruneStructured, PruneUnstructured
    from onnx_compress.passes.prune.prune_unstructured_pass import compressed_size
    from onnx_compress.runtime import compare
    from onnx_compress.stats import model_stats

    model = Normalize()(model).model
    base = model_stats(model)
    base_top1 = _top1(model, splits.test, settings)
    feeds1 = splits.test.take(1).inputs
    feeds32 = splits.test.take(32).inputs
    rows = [{"model": name, "method": "original", "params": base.params, "macs": base.macs,
             "size_bytes": base.size_bytes, "gzip_bytes": compressed_size(model), "top1": base_top1,
             "speedup_b1": 1.0, "speedup_b32": 1.0, "speedup_min_b1": 1.0, "speedup_min_b32": 1.0}]
    candidates: list[tuple[str, Any, dict[str, Any]]] = []
    variants = (("l2", 1, False), ("l2", 16, False), ("activation", 1, False), ("l2", "auto", True))
    for importance, round_to, reconstruct in variants:
        for ratio in RATIOS:
            result = PruneStructured(ratio=ratio, importance=importance, round_to=round_to,
                                     reconstruct=reconstruct, calibration=splits.calib)(model)
            widths = [w for g in result.pruned for w in g.widths.values()]
            label = (f"structured {ratio:g} {importance}" + (f" round_to {round_to}" if round_to != 1 else "")
                     + (" reconstruct" if reconstruct else ""))
            candidates.append((label, result.model, {"widths": widths}))
    for label, kwargs in (("unstructured 0.5", {"ratio": 0.5}), ("unstructured 2:4", {"nm": "2:4"})):
        result = PruneUnstructured(**kwargs)(model)
        candidates.append((label, result.model, {"sparsity": result.sparsity}))
    for label, pruned, extra in candidates:
        stats = model_stats(pruned)
        b1 = compare(model, pruned, feeds1, runs=args.runs, warmup=20, settings=settings)
        b32 = compare(model, pruned, feeds32, runs=max(20, args.runs // 3), warmup=5, settings=settings)
        rows.append({"model": name, "method": label, "params": stats.params, "macs": stats.macs,
                     "size_bytes": stats.size_bytes, "gzip_bytes": compressed_size(pruned),
                     "top1": _top1(pruned, splits.test, settings), "speedup_b1": b1.speedup,
                     "speedup_b32": b32.speedup, "speedup_min_b1": b1.a.min_ms / b1.b.min_ms,
                     "speedup_min_b32": b32.a.min_ms / b32.b.min_ms,
                     "latency_ms_b1": [b1.a.median_ms, b1.b.median_ms],
                     "latency_ms_b32": [b32.a.median_ms, b32.b.median_ms], **extra})
        print(f"  {name}: {label} done", file=sys.stderr, flush=True)
    return rows


def _torch_seed() -> tuple[Any, Any]:
    from onnx_compress.samples import seed_torch_cnn
    import torch

    import onnx_compress as oc
    from onnx_compress.model_io import load_model

    torch.set_num_threads(2)
    model, splits = seed_torch_cnn.trained_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.onnx"
        oc.export_torch(model, torch.from_numpy(splits.test.take(1).inputs["input"]), path)
        return load_model(path), splits


def _keras_seed() -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from onnx_compress.samples import seed_keras_cnn

    import onnx_compress as oc
    from onnx_compress.model_io import load_model

    model, splits = seed_keras_cnn.trained_model()
    with tempfile.TemporaryDirectory() as tmp:
        keras_path, path = Path(tmp) / "seed.keras", Path(tmp) / "seed.onnx"
        model.save(keras_path)
        oc.export_keras(keras_path, path, example_inputs=splits.test.take(2).inputs["input"])
        return load_model(path), splits


def _minilm_rows(args: argparse.Namespace, settings: Any) -> list[dict[str, Any]]:
    from onnx_compress.samples import minilm

    from onnx_compress.model_io import load_model
    from onnx_compress.passes import Normalize, PruneStructured
    from onnx_compress.runtime import Runner, compare
    from onnx_compress.runtime.metrics import cosine_per_sample
    from onnx_compress.stats import model_stats

    data = minilm.text_dataset(minilm.sentences(400), sequence=64)
    calib, val = data.subset(slice(0, 200)), data.subset(slice(200, 400))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "minilm.onnx"
        minilm.export_minilm(path, sequence=64)
        model = Normalize()(load_model(path)).model
    reference = Runner(model, settings).run_dataset(val)["embedding"]
    base = model_stats(model, dims={"sequence": 64})
    rows = [{"model": "all-MiniLM-L6-v2", "method": "original", "params": base.params, "macs": base.macs,
             "cosine_mean": 1.0, "cosine_min": 1.0, "speedup_b8": 1.0, "speedup_min_b8": 1.0}]
    feeds = val.take(8).inputs
    for importance, reconstruct in (("l2", False), ("activation", False), ("activation", True)):
        for ratio in (0.25, 0.5):
            result = PruneStructured(ratio=ratio, importance=importance, reconstruct=reconstruct,
                                     calibration=calib)(model)
            importance_label = importance + (" reconstruct" if reconstruct else "")
            got = Runner(result.model, settings).run_dataset(val)["embedding"]
            cosine = cosine_per_sample(reference, got)
            stats = model_stats(result.model, dims={"sequence": 64})
            side = compare(model, result.model, feeds, runs=max(20, args.runs // 10), warmup=3, settings=settings)
            rows.append({"model": "all-MiniLM-L6-v2", "method": f"FFN {ratio:g} {importance_label}",
                         "params": stats.params,
                         "macs": stats.macs, "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
                         "speedup_b8": side.speedup, "speedup_min_b8": side.a.min_ms / side.b.min_ms,
                         "groups_cut": len(result.pruned),
                         "groups_untouched": len(result.untouched)})
            print(f"  MiniLM: FFN {ratio:g} {importance_label} done", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str]) -> int:
    parser = benchmark_parser("prune", __doc__)
    parser.add_argument("--runs", type=int, default=300, help="timed runs per model at batch 1 (default 300)")
    parser.add_argument("--skip-keras", action="store_true", help="skip the Keras seed CNN")
    parser.add_argument("--skip-minilm", action="store_true", help="skip MiniLM")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from onnx_compress.runtime import SessionSettings
    from onnx_compress.table import format_table, human_bytes, human_count

    settings = SessionSettings(provider="cpu", intra_op_threads=args.threads)
    cnn: list[dict[str, Any]] = []
    model, splits = _torch_seed()
    cnn += _cnn_rows("seed CNN (torch)", model, splits, args, settings)
    if not args.skip_keras:
        model, splits = _keras_seed()
        cnn += _cnn_rows("seed CNN (Keras)", model, splits, args, settings)
    print(format_table(
        ["model / method", "params", "MACs", "gzip size", "speed-up b1", "speed-up b32", "test top-1 %"],
        [[f"{r['model']}: {r['method']}", human_count(r["params"]), human_count(r["macs"]),
          human_bytes(r["gzip_bytes"] or 0), f"{r['speedup_b1']:.2f}x ({r['speedup_min_b1']:.2f}x)",
          f"{r['speedup_b32']:.2f}x ({r['speedup_min_b32']:.2f}x)", f"{r['top1']:.2f}"]
         for r in cnn]))
    print("speed-up: median latency ratio, original / pruned, interleaved in one run (in brackets: ratio of the\n"
          "fastest runs, which machine load disturbs least)")
    transformer: list[dict[str, Any]] = []
    if not args.skip_minilm:
        transformer = _minilm_rows(args, settings)
        print()
        print(format_table(
            ["model / method", "params", "MACs (seq 64)", "speed-up b8", "cosine mean", "cosine min"],
            [[f"{r['model']}: {r['method']}", human_count(r["params"]), human_count(r["macs"]),
              f"{r['speedup_b8']:.2f}x ({r['speedup_min_b8']:.2f}x)", f"{r['cosine_mean']:.4f}",
              f"{r['cosine_min']:.4f}"] for r in transformer]))
    payload = {"threads": args.threads, "runs": args.runs, "cnn": cnn, "minilm": transformer,
               "note": "speed-up = median latency of the original / of the pruned model, measured interleaved in one run"}
    write_results(args.out, "prune", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
