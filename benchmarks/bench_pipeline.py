"""The product's main job, measured: ``compress`` with a preset under a budget, against ONNX
Runtime's own quantizers with their DEFAULT settings, on the same models, side by side.

Run:  python -m benchmarks pipeline [--only torch|keras|minilm|minilm-ts] [--preset small] [--threads 2] [--seed 0]

Targets (issue 7): seed CNN >= 8x smaller and >= 2.5x faster than fp32 with a test top-1 drop
<= 0.5 points; all-MiniLM-L6-v2 >= 5x smaller and >= 2.5x faster with mean cosine >= 0.99.

(a) seed PyTorch CNN and seed Keras CNN, trained here on digits: ``compress(preset)`` with a
    budget of 0.5 top-1 points checked on the validation split; ONNX Runtime's static quantizer
    calibrated on the calibration split. Quality is top-1 on the TEST split (never seen by any
    pass or by the budget).
(b) all-MiniLM-L6-v2 (pretrained, offline), sequence 64: ``compress(preset)`` with a budget of
    ``--minilm-max-drop`` on the mean cosine of 200 validation sentences; quality is the cosine
    to fp32 embeddings (mean and min) on 200 other sentences.
    ``minilm-ts``: the same encoder exported the way most users have it (TorchScript exporter,
    opset 17, per-token ``last_hidden_state``); quality is the cosine of each REAL token's hidden
    vector (padded positions left out, as the budget does).

Speed: every model of one table is timed in ONE round-robin run (``compare_many``: the order
rotates each round, so load bursts hit all models alike); ratios are fp32 median / model
median, ONNX Runtime on the CPU with ``--threads`` intra-op threads. Sizes are bytes on disk.
Writes ``artifacts/benchmarks/pipeline.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any


from benchmarks import environment, parser as benchmark_parser, write_results
from benchmarks.bench_quantize import _ort_default, cosines, export_minilm_variant



def _variants(fp32: Path, folder: Path, calib: Any, outcome_path: Path, label: str,
              compress_seconds: float) -> dict[str, dict[str, Any]]:
    variants: dict[str, dict[str, Any]] = {"fp32": {"path": fp32, "seconds": 0.0},
                                           label: {"path": outcome_path, "seconds": compress_seconds}}
    out = folder / "ort_dynamic.onnx"
    variants["ORT quantize_dynamic (defaults)"] = {"path": out, "seconds": _ort_default("dynamic", fp32, out)}
    out = folder / "ort_static.onnx"
    variants["ORT quantize_static (defaults)"] = {"path": out, "seconds": _ort_default("static", fp32, out, calib)}
    return variants


def _add_speed_and_size(rows: dict[str, dict[str, Any]], variants: dict[str, dict[str, Any]], data: Any,
                        plan: tuple[tuple[int, int], ...], threads: int) -> None:
    """Per batch size in ``plan`` ((batch, runs), ...): every variant timed in ONE round-robin
    run (``compare_many``), its median and its speed-up over fp32 (the first variant); then
    each variant's size ratio against fp32."""
    from onnx_compress.runtime import SessionSettings, compare_many

    session = SessionSettings(provider="cpu", intra_op_threads=threads)
    paths = [info["path"] for info in variants.values()]
    for batch, runs in plan:
        medians = [lat.median_ms for lat in compare_many(paths, data.take(batch).inputs, runs=runs, settings=session)]
        for name, median in zip(variants, medians):
            rows[name][f"speedup_b{batch}"] = medians[0] / median
            rows[name][f"median_ms_b{batch}"] = median
    for row in rows.values():
        row["smaller"] = rows["fp32"]["size_bytes"] / row["size_bytes"]


def _compress(fp32: Path, folder: Path, args: argparse.Namespace, calib: Any, val: Any, metric: str,
              max_drop: float, train: Any = None) -> tuple[Path, float, Any]:
    from onnx_compress.pipeline import PipelineSettings, compress
    from onnx_compress.runtime import SessionSettings

    start = time.perf_counter()
    outcome = compress(fp32, args.preset, calib=calib, val=val, metric=metric, max_drop=max_drop,
                       report_dir=folder / "report", train=train,
                       settings=PipelineSettings(session=SessionSettings(provider="cpu", intra_op_threads=args.threads)))
    seconds = time.perf_counter() - start
    path = outcome.save(folder / f"{args.preset}.onnx")
    return path, seconds, outcome


def _stages(outcome: Any) -> list[str]:
    """One line per stage of the pipeline's report: what each pass did and decided."""
    return [f"{stage.name}: {stage.decision}; {stage.pass_summary}" for stage in outcome.report.stages[1:]]


def bench_cnn(args: argparse.Namespace, framework: str) -> dict[str, Any]:
    import onnx_compress as oc
    from onnx_compress.stats import size_on_disk

    folder = args.out / "pipeline" / framework
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "seed_cnn.onnx"
    if framework == "torch":
        from onnx_compress.samples import seed_torch_cnn
        import torch

        torch.set_num_threads(args.threads)
        model, splits = seed_torch_cnn.trained_model(seed=args.seed)
        oc.export_torch(model, torch.from_numpy(splits.test.take(1).inputs["input"]), fp32)
    else:
        from onnx_compress.samples import seed_keras_cnn

        model, splits = seed_keras_cnn.trained_model(seed=args.seed)
        oc.export_keras(model, fp32, example_inputs=splits.test.take(2).inputs["input"])
    path, seconds, outcome = _compress(fp32, folder, args, splits.calib, splits.val, "top1", 0.5,
                                       train=splits.train)  # used by a recover stage (preset tiny) only
    variants = _variants(fp32, folder, splits.calib, path, f"ours: {args.preset}, budget 0.5", seconds)
    rows: dict[str, dict[str, Any]] = {}
    for name, info in variants.items():
        score = oc.validate(fp32, info["path"], splits.test, "top1")
        rows[name] = {"top1": score.candidate, "top1_drop": score.drop, "size_bytes": size_on_disk(info["path"]),
                      "seconds": info["seconds"]}
    _add_speed_and_size(rows, variants, splits.test, ((1, 400), (8, 200), (32, 80)), args.threads)
    rows[f"ours: {args.preset}, budget 0.5"]["stages"] = _stages(outcome)
    return rows


def bench_minilm(args: argparse.Namespace, export: str = "dynamo") -> dict[str, Any]:
    from onnx_compress.samples import minilm

    from onnx_compress.runtime import Runner, SessionSettings
    from onnx_compress.stats import size_on_disk

    folder = args.out / "pipeline" / ("minilm" if export == "dynamo" else "minilm_ts")
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "minilm.onnx"
    output = export_minilm_variant(fp32, export)
    data = minilm.text_dataset(minilm.sentences(600), sequence=64)
    calib, val, test = (data.subset(slice(a, a + 200)) for a in (0, 200, 400))
    path, seconds, outcome = _compress(fp32, folder, args, calib, val, "cosine", args.minilm_max_drop)
    label = f"ours: {args.preset}, budget {args.minilm_max_drop:g}"
    variants = _variants(fp32, folder, calib.take(64), path, label, seconds)
    session = SessionSettings(provider="cpu", intra_op_threads=args.threads)
    expected = Runner(fp32, session).run_dataset(test)[output]
    rows: dict[str, dict[str, Any]] = {}
    for name, info in variants.items():
        cos = cosines(expected, Runner(info["path"], session).run_dataset(test)[output], test)
        rows[name] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "compared": len(cos),
                      "size_bytes": size_on_disk(info["path"]), "seconds": info["seconds"]}
    _add_speed_and_size(rows, variants, test, ((1, 60), (8, 30)), args.threads)
    rows[label]["stages"] = _stages(outcome)
    rows[label]["alternatives"] = outcome.report.alternatives
    rows[label]["metric_scope"] = outcome.report.metric_scope
    return rows


def _print_stages(rows: dict[str, Any]) -> None:
    for name, row in rows.items():
        for line in row.get("stages", []):
            print(f"  {name} | {line}")


def _print(results: dict[str, Any]) -> None:
    from onnx_compress.table import format_table

    for framework in ("torch", "keras"):
        if framework in results:
            print(f"\nseed {framework} CNN (digits TEST split, 360 images; speed = fp32 median / model median, "
                  "all models in one round-robin run)")
            print(format_table(
                ["model", "test top-1 %", "drop", "smaller", "speed b1", "speed b8", "speed b32"],
                [[name, f"{r['top1']:.2f}", f"{r['top1_drop']:+.2f}", f"{r['smaller']:.2f}x",
                  f"{r['speedup_b1']:.2f}x", f"{r['speedup_b8']:.2f}x", f"{r['speedup_b32']:.2f}x"]
                 for name, r in results[framework].items()]))
            _print_stages(results[framework])
    for key, title in (("minilm", "all-MiniLM-L6-v2, dynamo export, sentence embeddings"),
                       ("minilm_ts", "all-MiniLM-L6-v2, TorchScript export, last_hidden_state (cosine per REAL token)")):
        if key in results:
            print(f"\n{title} (200 held-out sentences, sequence 64; speed in one round-robin run)")
            print(format_table(
                ["model", "cosine mean", "cosine min", "smaller", "speed b1", "speed b8"],
                [[name, f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}", f"{r['smaller']:.2f}x",
                  f"{r['speedup_b1']:.2f}x", f"{r['speedup_b8']:.2f}x"] for name, r in results[key].items()]))
            _print_stages(results[key])


def main(argv: list[str]) -> int:
    parser = benchmark_parser("pipeline", __doc__)
    parser.add_argument("--only", choices=["torch", "keras", "minilm", "minilm-ts"], action="append",
                        help="run only these models (repeatable; default all four; minilm-ts: the TorchScript "
                             "export with last_hidden_state)")
    parser.add_argument("--preset", default="small", help="the preset to measure (default small)")
    parser.add_argument("--minilm-max-drop", type=float, default=0.01,
                        help="MiniLM budget: largest drop of the mean cosine on validation sentences (default 0.01)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed CNNs: the training seed and the digits split (default 0; others: fresh models)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    only = args.only or ["torch", "keras", "minilm", "minilm-ts"]
    results: dict[str, Any] = {"threads": args.threads, "preset": args.preset, "seed": args.seed,
                               "environment": environment()}
    for framework in ("torch", "keras"):
        if framework in only:
            results[framework] = bench_cnn(args, framework)
    if "minilm" in only:
        results["minilm"] = bench_minilm(args)
    if "minilm-ts" in only:
        results["minilm_ts"] = bench_minilm(args, export="torchscript")
    _print(results)
    write_results(args.out, "pipeline", results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
