"""The seed PyTorch CNN, trained on real handwritten digits, exported to ONNX and checked.

Run:  python samples/seed_torch_cnn.py [--out artifacts/torch] [--epochs 12]

It trains ``SimpleModel`` on scikit-learn's digits (upscaled to 28x28; see
``onnx_compress.datasets``), exports it with ``onnx_compress.export_torch`` (parity-checked in
ONNX Runtime), verifies that ONNX Runtime's test accuracy equals PyTorch's, benchmarks the model,
quantizes it statically and dynamically (``onnx_compress.samples.seed_quantize``: ``seed_cnn_static.onnx``,
``seed_cnn_dynamic.onnx``) and prints a table. It also writes the data splits as ``.npz`` files next to the model so that
the CLI can be tried on them (``onnx-compress validate ... --data artifacts/torch/test.npz``).

``SimpleModel`` is also a valid ``FILE.py:NAME`` for the CLI:
``onnx-compress export torch samples/seed_torch_cnn.py:SimpleModel --input-shape 1x1x28x28 -o m.onnx``
"""

from __future__ import annotations

import time

import torch

import onnx_compress as oc
from onnx_compress.samples.seed_quantize import report
from onnx_compress.samples.script import script_args, script_parser
from onnx_compress.samples.seed_torch_cnn import SimpleModel, predict, trained_model  # noqa: F401 (FILE.py:SimpleModel)


def main() -> None:
    parser = script_parser(__doc__, "artifacts/torch")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    args = script_args(parser)
    torch.set_num_threads(2)

    start = time.perf_counter()
    model, splits = trained_model(args.epochs)
    train_seconds = time.perf_counter() - start
    splits.save(args.out)
    torch_pred = predict(model, splits.test)

    onnx_path = args.out / "seed_cnn.onnx"
    export = oc.export_torch(model, torch.from_numpy(splits.test.take(1).inputs["input"]), onnx_path)
    report("PyTorch", torch_pred, onnx_path, export, splits, args.epochs, train_seconds)
    print(f"wrote {onnx_path} and {args.out}/{{train,calib,val,test}}.npz")


if __name__ == "__main__":
    main()
