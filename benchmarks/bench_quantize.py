"""Quantization: onnx-compress's Quantize vs ONNX Runtime's quantize_dynamic / quantize_static with
their DEFAULT settings, on (a) the seed CNN trained on digits and (b) all-MiniLM-L6-v2.

Run:  python -m benchmarks quantize [--only cnn|minilm|minilm-ts] [--threads 2] [--max-drop 0.004]

(a) seed CNN (PyTorch sample, trained here): top-1 on the digits test split, size, latency ratio
    vs fp32 at batch 1, 8 and 32. ONNX Runtime static is calibrated on the calibration split; ours
    also gets the validation split and a budget of 0.5 top-1 points.
(b) all-MiniLM-L6-v2 (pretrained, offline): embedding cosine against fp32 (mean and min) on 200
    held-out real sentences, size, latency ratio vs fp32 at batch 8, sequence 64. ONNX Runtime
    static is calibrated on 64 sentences; ours gets 200 validation sentences (disjoint from the
    test sentences) and ``--max-drop`` on the mean cosine. Three more rows show where the speed
    comes from: the ``fuse`` pass alone (fp32), and dynamic int8 per channel without and with
    the fusions, both without smoothing and without a budget.
(c) ``minilm-ts``: the same rows for the encoder as most users export it (TorchScript exporter,
    opset 17, per-token ``last_hidden_state``), quality = cosine per REAL token.

Every latency ratio comes from interleaved runs of fp32 against that model
(``onnx_compress.runtime.compare``) in 5 consecutive blocks, the median of the block ratios,
ONNX Runtime on the CPU with ``--threads`` intra-op threads.
Writes ``artifacts/benchmarks/quantize.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


from benchmarks import environment, parser as benchmark_parser, write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _ort_reader(data, input_names: list[str], batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{n: feeds[n] for n in input_names} for feeds in data.batches(batch)])

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def _ort_default(kind: str, src: Path, dst: Path, calib=None, batch: int = 8) -> float:
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    from onnx_compress.passes.quantize.backend import quiet_ort

    src, dst = src.resolve(), dst.resolve()
    start = time.perf_counter()
    # ONNX Runtime's tools may write uuid-named external-data files into the working directory:
    # run them in a scratch folder so nothing lands in the user's checkout
    with quiet_ort(), tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        if kind == "dynamic":
            quantize_dynamic(str(src), str(dst))
        else:
            quantize_static(str(src), str(dst), _ort_reader(calib, list(calib.inputs), batch))
    return time.perf_counter() - start


def _ours(src: Path, dst: Path, **kwargs: Any) -> tuple[float, Any]:
    from onnx_compress.model_io import load_model, save_model
    from onnx_compress.passes import Normalize, Quantize

    start = time.perf_counter()
    result = Quantize(**kwargs)(Normalize()(load_model(src)).model)
    seconds = time.perf_counter() - start
    if result.modified:
        save_model(result.model, dst)
    return seconds, result


def _speed(fp32: Path, candidate: Path, feeds, threads: int, runs: int) -> float:
    """fp32 vs candidate, interleaved, in 5 blocks: the median of the block ratios of medians
    (the speed guard's measurement; robust to bursts of load on a shared machine)."""
    from onnx_compress.passes.quantize.guard import measure_speed

    return measure_speed(fp32, candidate, feeds, runs=runs, threads=threads, label=candidate.name).speedup


def bench_cnn(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from onnx_compress.samples import seed_torch_cnn
    import torch

    import onnx_compress as oc
    from onnx_compress.stats import size_on_disk

    torch.set_num_threads(args.threads)
    model, splits = seed_torch_cnn.trained_model()
    fp32 = folder / "seed_cnn.onnx"
    oc.export_torch(model, torch.from_numpy(splits.test.take(1).inputs["input"]), fp32)
    variants: dict[str, dict[str, Any]] = {"fp32": {"path": fp32, "seconds": 0.0}}
    out = folder / "cnn_ort_dynamic.onnx"
    variants["ORT quantize_dynamic (defaults)"] = {"path": out, "seconds": _ort_default("dynamic", fp32, out)}
    out = folder / "cnn_ort_static.onnx"
    variants["ORT quantize_static (defaults)"] = {"path": out,
                                                  "seconds": _ort_default("static", fp32, out, splits.calib)}
    for mode in ("static", "dynamic"):
        out = folder / f"cnn_ours_{mode}.onnx"
        seconds, result = _ours(fp32, out, mode=mode, calibration=splits.calib, validation=splits.val,
                                max_drop=0.5, threads=args.threads)
        variants[f"ours {mode}"] = {"path": out if result.modified else fp32, "seconds": seconds,
                                    "summary": result.summary()}
    rows = {}
    for name, info in variants.items():
        score = oc.validate(fp32, info["path"], splits.test, "top1")
        row = {"top1": score.candidate, "top1_drop": score.drop, "size_bytes": size_on_disk(info["path"]),
               "seconds": info["seconds"], "summary": info.get("summary", "")}
        for batch, runs in ((1, 300), (8, 200), (32, 60)):
            row[f"speedup_b{batch}"] = 1.0 if name == "fp32" else _speed(
                fp32, info["path"], splits.test.take(batch).inputs, args.threads, runs)
        rows[name] = row
    fp32_size = rows["fp32"]["size_bytes"]
    for row in rows.values():
        row["smaller"] = fp32_size / row["size_bytes"]
    return rows


def export_minilm_variant(fp32: Path, export: str) -> str:
    """Export all-MiniLM-L6-v2 to ``fp32``; returns the output to compare. ``dynamo``: the
    sample's sentence embedder (``embedding``, one vector per sentence); ``torchscript``: the
    encoder as most users export it (``dynamo=False``, opset 17, ``last_hidden_state`` per token)."""
    from onnx_compress.samples import minilm

    if export == "torchscript":
        minilm.export_minilm_torchscript(fp32, sequence=64)
        return "last_hidden_state"
    minilm.export_minilm(fp32, sequence=64)
    return "embedding"


def cosines(expected: Any, got: Any, data: Any) -> Any:
    """Cosine per sentence embedding, or per REAL token for per-token outputs (padding left out)."""
    from onnx_compress.runtime.metrics import cosine_per_sample

    if expected.ndim == 3:
        real = data.inputs["attention_mask"].astype(bool)
        return cosine_per_sample(expected[real], got[real])
    return cosine_per_sample(expected, got)


def bench_minilm(args: argparse.Namespace, folder: Path, export: str = "dynamo") -> dict[str, Any]:
    from onnx_compress.samples import minilm

    from onnx_compress.model_io import load_model, save_model
    from onnx_compress.passes import Fuse, Normalize

    from onnx_compress.runtime import Runner, SessionSettings
    from onnx_compress.stats import size_on_disk

    if export != "dynamo":
        folder = folder / "minilm_ts"
        folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "minilm.onnx"
    output = export_minilm_variant(fp32, export)
    data = minilm.text_dataset(minilm.sentences(600), sequence=64)
    calib, val, test = (data.subset(slice(a, a + 200)) for a in (0, 200, 400))
    variants: dict[str, dict[str, Any]] = {"fp32": {"path": fp32, "seconds": 0.0}}
    out = folder / "minilm_ort_dynamic.onnx"
    variants["ORT quantize_dynamic (defaults)"] = {"path": out, "seconds": _ort_default("dynamic", fp32, out)}
    out = folder / "minilm_ort_static.onnx"
    variants["ORT quantize_static (defaults)"] = {"path": out, "seconds": _ort_default(
        "static", fp32, out, calib.take(64))}
    out = folder / "minilm_ours.onnx"
    seconds, result = _ours(fp32, out, mode="auto", calibration=calib, validation=val, metric="cosine",
                            max_drop=args.max_drop, threads=args.threads)
    variants["ours (auto, max_drop %.3g)" % args.max_drop] = {
        "path": out if result.modified else fp32, "seconds": seconds, "summary": result.summary(),
        "kept_float": [n.name for n in result.excluded]}
    # where the speed comes from: the fusions alone, then int8 without / with them (no smoothing)
    out = folder / "minilm_fused.onnx"
    start = time.perf_counter()
    save_model(Fuse(threads=args.threads)(Normalize()(load_model(fp32)).model).model, out)
    variants["fp32 after fuse only"] = {"path": out, "seconds": time.perf_counter() - start}
    for label, preprocess in (("ours dynamic, no fusion, no smoothing", "none"),
                              ("ours dynamic, fused, no smoothing", "auto")):
        out = folder / f"minilm_dynamic_{preprocess}.onnx"
        seconds, result = _ours(fp32, out, mode="dynamic", preprocess=preprocess, smooth="off", guard="off",
                                calibration=calib, validation=val, metric="cosine", threads=args.threads)
        variants[label] = {"path": out, "seconds": seconds, "summary": result.summary()}
    session = SessionSettings(provider="cpu", intra_op_threads=args.threads)
    expected = Runner(fp32, session).run_dataset(test)[output]
    feeds = test.take(8).inputs
    rows = {}
    for name, info in variants.items():
        cos = cosines(expected, Runner(info["path"], session).run_dataset(test)[output], test)
        rows[name] = {
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "size_bytes": size_on_disk(info["path"]), "seconds": info["seconds"],
            "speedup_b8": 1.0 if name == "fp32" else _speed(fp32, info["path"], feeds, args.threads, 40),
            "summary": info.get("summary", ""), "kept_float": info.get("kept_float", []),
        }
    fp32_size = rows["fp32"]["size_bytes"]
    for row in rows.values():
        row["smaller"] = fp32_size / row["size_bytes"]
    return rows


def _print(results: dict[str, Any]) -> None:
    from onnx_compress.table import format_table

    if "seed_cnn" in results:
        print("seed CNN (digits test split, 360 images; latency ratio = fp32 median / model median)")
        print(format_table(
            ["model", "test top-1 %", "drop", "smaller", "speed b1", "speed b8", "speed b32"],
            [[name, f"{r['top1']:.2f}", f"{r['top1_drop']:+.2f}", f"{r['smaller']:.2f}x",
              f"{r['speedup_b1']:.2f}x", f"{r['speedup_b8']:.2f}x", f"{r['speedup_b32']:.2f}x"]
             for name, r in results["seed_cnn"].items()]))
    for key, title in (("minilm", "all-MiniLM-L6-v2, dynamo export, sentence embeddings"),
                       ("minilm_ts", "all-MiniLM-L6-v2, TorchScript export, last_hidden_state (cosine per REAL token)")):
        if key in results:
            print(f"\n{title} (200 held-out sentences; batch 8, sequence 64)")
            print(format_table(
                ["model", "cosine mean", "cosine min", "smaller", "speed b8"],
                [[name, f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}", f"{r['smaller']:.2f}x",
                  f"{r['speedup_b8']:.2f}x"] for name, r in results[key].items()]))


def main(argv: list[str]) -> int:
    parser = benchmark_parser("quantize", __doc__)
    parser.add_argument("--only", choices=["cnn", "minilm", "minilm-ts"], default=None,
                        help="run one of the benchmarks (minilm-ts: the TorchScript export, last_hidden_state)")
    parser.add_argument("--max-drop", type=float, default=0.004,
                        help="ours on MiniLM: largest drop of the mean cosine on the validation sentences")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folder = args.out / "quantize"
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"threads": args.threads, "environment": environment()}
    if args.only in (None, "cnn"):
        results["seed_cnn"] = bench_cnn(args, folder)
    if args.only in (None, "minilm"):
        results["minilm"] = bench_minilm(args, folder)
    if args.only in (None, "minilm-ts"):
        results["minilm_ts"] = bench_minilm(args, folder, export="torchscript")
    _print(results)
    write_results(args.out, "quantize", results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
