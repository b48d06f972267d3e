"""The seed Keras CNN, trained on real handwritten digits, exported to ONNX and checked.

Run:  python samples/seed_keras_cnn.py [--out artifacts/keras] [--epochs 10]

It trains the seed ``Sequential`` model on scikit-learn's digits (upscaled to 28x28, NHWC),
saves it as ``seed_cnn.keras``, exports that file with ``onnx_compress.export_keras`` (loaded
with safe_mode, parity-checked in ONNX Runtime), verifies that ONNX Runtime's test accuracy
equals Keras's, benchmarks the model, quantizes it statically and dynamically (``onnx_compress.samples.seed_quantize``)
and prints a table. The data splits are written as
``.npz`` files next to the model.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import onnx_compress as oc  # noqa: E402
from onnx_compress.runtime import Runner, SessionSettings, benchmark  # noqa: E402
from onnx_compress.samples.seed_keras_cnn import predict, trained_model  # noqa: E402
from onnx_compress.samples.seed_quantize import quantize_rows  # noqa: E402
from onnx_compress.table import format_table, human_bytes, human_count  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/keras"), help="output folder")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    model, splits = trained_model(args.epochs)
    train_seconds = time.perf_counter() - start
    splits.save(args.out)
    keras_path = args.out / "seed_cnn.keras"
    model.save(keras_path)
    keras_pred = predict(model, splits.test)
    keras_acc = float((keras_pred == splits.test.labels).mean() * 100)

    onnx_path = args.out / "seed_cnn.onnx"
    export = oc.export_keras(keras_path, onnx_path, example_inputs=splits.test.take(2).inputs["input"])
    runner = Runner(onnx_path, SessionSettings(provider="cpu"))
    onnx_pred = runner.run_dataset(splits.test)["output"].argmax(1)
    onnx_acc = float((onnx_pred == splits.test.labels).mean() * 100)
    if not np.array_equal(onnx_pred, keras_pred):
        raise SystemExit(
            f"ONNX Runtime and Keras disagree on {int((onnx_pred != keras_pred).sum())} test images"
        )

    stats = oc.model_stats(onnx_path)
    latency = benchmark(runner, splits.test.take(1).inputs, runs=200)
    latency32 = benchmark(runner, splits.test.take(32).inputs, runs=50)
    print(f"seed Keras CNN on digits ({len(splits.train)} train / {len(splits.test)} test images, "
          f"trained {args.epochs} epochs in {train_seconds:.1f} s)")
    print(format_table(
        ["what", "value"],
        [
            ["Keras test top-1 (%)", f"{keras_acc:.2f}"],
            ["ONNX Runtime test top-1 (%)", f"{onnx_acc:.2f}"],
            ["export max abs error", f"{export.max_abs_error:.2e}"],
            ["parameters", human_count(stats.params)],
            ["MACs (batch 1)", human_count(stats.macs)],
            ["file size", human_bytes(stats.size_bytes)],
            ["ORT latency batch 1 (median / p90 ms)", f"{latency.median_ms:.3f} / {latency.p90_ms:.3f}"],
            ["ORT latency batch 32 (median / p90 ms)", f"{latency32.median_ms:.3f} / {latency32.p90_ms:.3f}"],
            *quantize_rows(onnx_path, splits),
        ],
    ))
    print(f"wrote {keras_path}, {onnx_path} and {args.out}/{{train,calib,val,test}}.npz")


if __name__ == "__main__":
    main()
