"""The seed samples' closing check and table (used by ``samples/seed_torch_cnn.py`` and
``samples/seed_keras_cnn.py``), with their static and dynamic int8 rows.

:func:`report` checks that ONNX Runtime predicts every test image as the framework did and prints
the table: test top-1, export error, parameters, MACs, size, latency and the int8 rows.
:func:`quantize_rows` normalizes the exported model, quantizes it with
``onnx_compress.passes.Quantize`` in ``static`` mode (calibrated on the digits' calibration split,
budget checked on the validation split) and in ``dynamic`` mode, writes both models next to the
float one, and returns table rows: test top-1, size against fp32, and the speed the pass's guard
measured against fp32 (interleaved, batch 8, on this CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import onnx_compress as oc
from onnx_compress.converters.parity import ExportResult
from onnx_compress.model_io import load_model, save_model
from onnx_compress.passes import Normalize, Quantize
from onnx_compress.runtime import Runner, SessionSettings, benchmark
from onnx_compress.table import format_table, human_bytes, human_count

__all__ = ["report", "quantize_rows"]


def report(framework: str, framework_pred: np.ndarray, onnx_path: Path, export: ExportResult,
           splits: oc.datasets.DigitsSplits, epochs: int, train_seconds: float) -> None:
    """Check that ONNX Runtime predicts every test image as ``framework`` did (SystemExit if not),
    then print the seed model's table."""
    runner = Runner(onnx_path, SessionSettings(provider="cpu"))
    onnx_pred = runner.run_dataset(splits.test)["output"].argmax(1)
    if not np.array_equal(onnx_pred, framework_pred):
        raise SystemExit(f"ONNX Runtime and {framework} disagree on {int((onnx_pred != framework_pred).sum())} "
                         "test images")
    stats = oc.model_stats(onnx_path)
    latency = {batch: benchmark(runner, splits.test.take(batch).inputs, runs=runs)
               for batch, runs in ((1, 200), (32, 50))}
    print(f"seed {framework} CNN on digits ({len(splits.train)} train / {len(splits.test)} test images, "
          f"trained {epochs} epochs in {train_seconds:.1f} s)")
    print(format_table(["what", "value"], [
        [f"{framework} test top-1 (%)", f"{float((framework_pred == splits.test.labels).mean() * 100):.2f}"],
        ["ONNX Runtime test top-1 (%)", f"{float((onnx_pred == splits.test.labels).mean() * 100):.2f}"],
        ["export max abs error", f"{export.max_abs_error:.2e}"],
        ["parameters", human_count(stats.params)],
        ["MACs (batch 1)", human_count(stats.macs)],
        ["file size", human_bytes(stats.size_bytes)],
        *([f"ORT latency batch {batch} (median / p90 ms)", f"{t.median_ms:.3f} / {t.p90_ms:.3f}"]
          for batch, t in latency.items()),
        *quantize_rows(onnx_path, splits),
    ]))


def quantize_rows(onnx_path: Path, splits: oc.datasets.DigitsSplits, *, threads: int = 2,
                  max_drop: float = 0.5) -> list[list[str]]:
    """Quantize ``onnx_path`` statically and dynamically; rows ``[what, value]`` for the table."""
    model = Normalize()(load_model(onnx_path)).model
    rows = []
    for mode in ("static", "dynamic"):
        result = Quantize(mode=mode, calibration=splits.calib, validation=splits.val, max_drop=max_drop,
                          threads=threads)(model)
        if not result.modified:
            rows.append([f"{mode} int8", "not applied: " + result.nothing_to_do.split(" (")[0]])
            continue
        out = onnx_path.with_name(f"{onnx_path.stem}_{mode}.onnx")
        save_model(result.model, out)
        score = oc.validate(onnx_path, out, splits.test, "top1")
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(result.quantized_op_types.items()))
        speed = f"{result.speed.speedup:.2f}x" if result.speed is not None else "not measured"
        rows.append([f"{mode} int8 ({ops}): test top-1 (%)", f"{score.candidate:.2f} (drop {score.drop:+.2f})"])
        rows.append([f"{mode} int8: size / speed vs fp32 (batch 8)",
                     f"{human_bytes(result.size_after)} ({result.size_ratio:.2f}x smaller) / {speed}"])
    return rows
