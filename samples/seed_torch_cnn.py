"""The seed PyTorch CNN, trained on real handwritten digits, exported to ONNX and checked.

Run:  python samples/seed_torch_cnn.py [--out artifacts/torch] [--epochs 12]

It trains ``SimpleModel`` on scikit-learn's digits (upscaled to 28x28; see
``onnx_compress.datasets``), exports it with ``onnx_compress.export_torch`` (parity-checked in
ONNX Runtime), verifies that ONNX Runtime's test accuracy equals PyTorch's, benchmarks the model,
quantizes it statically and dynamically (``seed_quantize.py``: ``seed_cnn_static.onnx``,
``seed_cnn_dynamic.onnx``) and prints a table. It also writes the data splits as ``.npz`` files next to the model so that
the CLI can be tried on them (``onnx-compress validate ... --data artifacts/torch/test.npz``).

``SimpleModel`` is also a valid ``FILE.py:NAME`` for the CLI:
``onnx-compress export torch samples/seed_torch_cnn.py:SimpleModel --input-shape 1x1x28x28 -o m.onnx``
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F  # the seed forgot this import; forward() needs it

import onnx_compress as oc
from onnx_compress.data import Dataset
from onnx_compress.runtime import Runner, SessionSettings, benchmark
from onnx_compress.table import format_table, human_bytes, human_count
from seed_quantize import quantize_rows


class SimpleModel(nn.Module):
    """The seed model: two 3x3 convs with max-pooling, then two fully connected layers.

    Fixed from the seed: fc1 takes 64*5*5 inputs. A 28x28 input becomes 26 (conv1), 13 (pool),
    11 (conv2), 5 (pool): 64 channels of 5x5, not 6x6 as the seed had it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.fc1 = nn.Linear(64 * 5 * 5, 128)  # seed: 64 * 6 * 6, wrong for 28x28 inputs
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


def train(model: nn.Module, data: Dataset, *, epochs: int = 12, seed: int = 0, lr: float = 2e-3,
          batch_size: int = 64) -> list[float]:
    """Train with Adam on the negative log-likelihood; returns the mean loss per epoch."""
    torch.manual_seed(seed)
    x = torch.from_numpy(next(iter(data.inputs.values())))
    y = torch.from_numpy(data.labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = F.nll_loss(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    model.eval()
    return losses


def predict(model: nn.Module, data: Dataset) -> np.ndarray:
    """Class predictions of the PyTorch model."""
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(next(iter(data.inputs.values())))).argmax(1).numpy()


def trained_model(epochs: int = 12, seed: int = 0) -> tuple[SimpleModel, oc.datasets.DigitsSplits]:
    """A ``SimpleModel`` trained on the digits' train split, and the splits (NCHW)."""
    torch.manual_seed(seed)
    splits = oc.load_digits("NCHW", seed=seed)
    model = SimpleModel()
    train(model, splits.train, epochs=epochs, seed=seed)
    return model, splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/torch"), help="output folder")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    model, splits = trained_model(args.epochs)
    train_seconds = time.perf_counter() - start
    splits.save(args.out)
    torch_pred = predict(model, splits.test)
    torch_acc = float((torch_pred == splits.test.labels).mean() * 100)

    onnx_path = args.out / "seed_cnn.onnx"
    export = oc.export_torch(model, torch.from_numpy(splits.test.take(1).inputs["input"]), onnx_path)
    runner = Runner(onnx_path, SessionSettings(provider="cpu"))
    onnx_pred = runner.run_dataset(splits.test)["output"].argmax(1)
    onnx_acc = float((onnx_pred == splits.test.labels).mean() * 100)
    if not np.array_equal(onnx_pred, torch_pred):
        raise SystemExit(
            f"ONNX Runtime and PyTorch disagree on {int((onnx_pred != torch_pred).sum())} test images"
        )

    stats = oc.model_stats(onnx_path)
    latency = benchmark(runner, splits.test.take(1).inputs, runs=200)
    latency32 = benchmark(runner, splits.test.take(32).inputs, runs=50)
    print(f"seed PyTorch CNN on digits ({len(splits.train)} train / {len(splits.test)} test images, "
          f"trained {args.epochs} epochs in {train_seconds:.1f} s)")
    print(format_table(
        ["what", "value"],
        [
            ["PyTorch test top-1 (%)", f"{torch_acc:.2f}"],
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
    print(f"wrote {onnx_path} and {args.out}/{{train,calib,val,test}}.npz")


if __name__ == "__main__":
    main()
