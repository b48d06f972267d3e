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

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import onnx_compress as oc  # noqa: E402
from onnx_compress.samples.seed_keras_cnn import predict, trained_model  # noqa: E402
from onnx_compress.samples.seed_quantize import report  # noqa: E402
from onnx_compress.samples.script import script_args, script_parser  # noqa: E402


def main() -> None:
    parser = script_parser(__doc__, "artifacts/keras")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    args = script_args(parser)

    start = time.perf_counter()
    model, splits = trained_model(args.epochs)
    train_seconds = time.perf_counter() - start
    splits.save(args.out)
    keras_path = args.out / "seed_cnn.keras"
    model.save(keras_path)
    keras_pred = predict(model, splits.test)

    onnx_path = args.out / "seed_cnn.onnx"
    export = oc.export_keras(keras_path, onnx_path, example_inputs=splits.test.take(2).inputs["input"])
    report("Keras", keras_pred, onnx_path, export, splits, args.epochs, train_seconds)
    print(f"wrote {keras_path}, {onnx_path} and {args.out}/{{train,calib,val,test}}.npz")


if __name__ == "__main__":
    main()
