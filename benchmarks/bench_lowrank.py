"""Low-rank factorization: what plain and data-aware SVD buy on MiniLM and on the seed CNN.

    python -m benchmarks lowrank [--threads 2] [--runs 200] [--skip-minilm] [--skip-cnn]

all-MiniLM-L6-v2 (pretrained, 22.6 M parameters of which 10.6 M in the 36 weight MatMuls; the
rest is mostly the 30522 x 384 word embedding): every weight MatMul at ``energy`` 0.99 / 0.95 /
0.90, without data (plain SVD) and with 200 real calibration sentences (whitened SVD at the same
ranks, since ``energy`` is measured on W), plus the data-driven ``max_error`` criterion.
Fidelity is the cosine of the sentence embeddings against the original on 200 held-out
sentences (mean and min); latency at batch 8 x sequence 64.

Seed PyTorch CNN trained on the digits' train split, no fine-tuning: fc1 (1600 x 128) at rank
32, plain and data-aware (the design's hand experiment), then every layer of >= 1000 weights
by ``energy`` and ``max_error``. Fidelity is test top-1; latency at batch 1 and 32.

Every variant's latency is a ratio against the original measured side by side in the same run
(interleaved, medians), ONNX Runtime on CPU with ``--threads`` intra-op threads (default 2).
Parameters are the whole model's; "weights" are those of the layers the pass considered.
Writes ``artifacts/benchmarks/lowrank.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


from benchmarks import parser as benchmark_parser, write_results

ENERGIES = (0.99, 0.95, 0.90)


def _factor(model: Any, label: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    from onnx_compress.passes import LowRank

    start = time.perf_counter()
    result = LowRank(**kwargs)(model)
    seconds = time.perf_counter() - start
    considered = [layer for layer in result.layers if layer.shape is not None]
    ranks = [layer.rank for layer in result.factored]
    errors = [layer.output_error for layer in result.factored if layer.output_error is not None]
    return result.model, {
        "variant": label,
        "method": result.method,
        "criterion": result.criterion,
        "factored": f"{len(result.factored)}/{len(considered)}",
        "params": result.params_after,
        "weights_before": sum(layer.params_before for layer in considered),
        "weights_after": sum(layer.params_after for layer in considered),
        "ranks": ranks,
        "calib_output_error_max": max(errors) if errors else None,
        "pass_seconds": seconds,
    }


def _minilm_rows(args: argparse.Namespace, settings: Any) -> list[dict[str, Any]]:
    from onnx_compress.samples import minilm

    from onnx_compress.model_io import load_model
    from onnx_compress.passes import Normalize
    from onnx_compress.runtime import Runner, compare
    from onnx_compress.runtime.metrics import cosine_per_sample
    from onnx_compress.stats import count_params

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "minilm.onnx"
        minilm.export_minilm(path, sequence=64)
        model = Normalize()(load_model(path)).model
    data = minilm.text_dataset(minilm.sentences(400), sequence=64)
    calib, val = data.subset(slice(0, 200)), data.subset(slice(200, 400))
    reference = Runner(model, settings).run_dataset(val, batch_size=32)["embedding"]
    feeds = val.take(8).inputs
    rows = [{"model": "MiniLM", "variant": "original", "method": "-", "params": count_params(model),
             "cosine_mean": 1.0, "cosine_min": 1.0, "speedup": 1.0}]
    variants: list[tuple[str, dict[str, Any]]] = []
    for energy in ENERGIES:
        variants.append((f"energy {energy:g}", {"energy": energy}))
        variants.append((f"energy {energy:g} + data", {"energy": energy, "calibration": calib}))
    for max_error in args.max_errors:
        variants.append((f"max_error {max_error:g} + data", {"max_error": max_error, "calibration": calib}))
    for label, kwargs in variants:
        factored, row = _factor(model, label, **kwargs)
        out = Runner(factored, settings).run_dataset(val, batch_size=32)["embedding"]
        cos = cosine_per_sample(reference, out)
        side = compare(model, factored, feeds, runs=max(20, args.runs // 2), warmup=5, settings=settings)
        rows.append({"model": "MiniLM", **row, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                     "speedup": side.speedup, "latency_ms": [side.a.median_ms, side.b.median_ms]})
        logging.getLogger(__name__).warning("MiniLM %s: cosine %.4f, %.2fx", label, cos.mean(), side.speedup)
    return rows


def _cnn_rows(args: argparse.Namespace, settings: Any) -> list[dict[str, Any]]:
    from onnx_compress.samples import seed_torch_cnn
    import torch

    import onnx_compress as oc
    from onnx_compress.model_io import load_model
    from onnx_compress.passes import Normalize
    from onnx_compress.runtime import Runner, compare
    from onnx_compress.stats import count_params

    torch.set_num_threads(2)
    network, splits = seed_torch_cnn.trained_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed_cnn.onnx"
        oc.export_torch(network, torch.from_numpy(splits.test.take(1).inputs["input"]), path)
        model = Normalize()(load_model(path)).model

    def top1(candidate: Any) -> float:
        out = Runner(candidate, settings).run_dataset(splits.test)["output"]
        return float((out.argmax(1) == splits.test.labels).mean() * 100)

    rows = [{"model": "seed CNN", "variant": "original", "method": "-", "params": count_params(model),
             "top1": top1(model), "speedup_b1": 1.0, "speedup_b32": 1.0}]
    fc1_only = {"rank_ratio": 0.25, "op_types": ("Gemm",)}  # fc2 (1280 weights) is below min_size
    variants = [
        ("fc1 rank 32", dict(fc1_only)),
        ("fc1 rank 32 + data", {**fc1_only, "calibration": splits.calib}),
        ("energy 0.95", {"energy": 0.95, "min_size": 1000}),
        ("energy 0.95 + data", {"energy": 0.95, "min_size": 1000, "calibration": splits.calib}),
        ("energy 0.90", {"energy": 0.90, "min_size": 1000}),
        ("energy 0.90 + data", {"energy": 0.90, "min_size": 1000, "calibration": splits.calib}),
        ("max_error 0.05 + data", {"max_error": 0.05, "min_size": 1000, "calibration": splits.calib}),
    ]
    for label, kwargs in variants:
        factored, row = _factor(model, label, **kwargs)
        b1 = compare(model, factored, splits.test.take(1).inputs, runs=args.runs, warmup=20, settings=settings)
        b32 = compare(model, factored, splits.test.take(32).inputs, runs=max(20, args.runs // 2), warmup=5,
                      settings=settings)
        rows.append({"model": "seed CNN", **row, "top1": top1(factored), "speedup_b1": b1.speedup,
                     "speedup_b32": b32.speedup})
    return rows


def _table(rows: list[dict[str, Any]], fidelity: list[str], speed: list[str]) -> str:
    from onnx_compress.table import format_table, human_count

    headers = ["variant", "method", "factored", "params", "weights", *fidelity, *speed]
    body = []
    for row in rows:
        weights = (f"{human_count(row['weights_before'])} -> {human_count(row['weights_after'])}"
                   if "weights_before" in row else "-")
        body.append([row["variant"], row["method"], row.get("factored", "-"), human_count(row["params"]), weights,
                     *[f"{row[key]:.4f}" if key.startswith("cosine") else f"{row[key]:.2f}" for key in fidelity],
                     *[f"{row[key]:.2f}x" for key in speed]])
    return format_table(headers, body)


def main(argv: list[str]) -> int:
    parser = benchmark_parser("lowrank", __doc__)
    parser.add_argument("--runs", type=int, default=200, help="interleaved runs per latency comparison (default 200)")
    parser.add_argument("--max-errors", type=float, nargs="*", default=[0.1, 0.2],
                        help="data-aware max_error variants for MiniLM (default 0.1 0.2)")
    parser.add_argument("--skip-minilm", action="store_true", help="only the seed CNN")
    parser.add_argument("--skip-cnn", action="store_true", help="only MiniLM")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from onnx_compress.runtime import SessionSettings

    settings = SessionSettings(provider="cpu", intra_op_threads=args.threads)
    payload: dict[str, Any] = {"threads": args.threads, "runs": args.runs}
    if not args.skip_cnn:
        cnn = _cnn_rows(args, settings)
        payload["seed_cnn"] = cnn
        print("seed PyTorch CNN on digits (test top-1, no fine-tuning; speedup = original / factored latency)")
        print(_table(cnn, ["top1"], ["speedup_b1", "speedup_b32"]))
        print()
    if not args.skip_minilm:
        rows = _minilm_rows(args, settings)
        payload["minilm"] = rows
        print("all-MiniLM-L6-v2 (embedding cosine vs original on 200 held-out sentences; batch 8 x 64 tokens)")
        print(_table(rows, ["cosine_mean", "cosine_min"], ["speedup"]))
    write_results(args.out, "lowrank", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
