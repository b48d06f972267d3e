"""The seed PyTorch CNN (``SimpleModel``) and its training on real handwritten digits.

Used by ``samples/seed_torch_cnn.py`` (train, export, check, quantize, print a table), the tests'
fixtures and the benchmarks. torch is required when this module is imported.
"""

from __future__ import annotations

import numpy as np

import onnx_compress as oc
from onnx_compress.data import Dataset
from onnx_compress.optional import require

torch = require("torch", "the seed PyTorch CNN sample")
nn = torch.nn
F = torch.nn.functional  # the seed forgot this import; forward() needs it

__all__ = ["SimpleModel", "predict", "train", "trained_model"]


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
