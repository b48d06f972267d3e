"""The real data set the samples, tests and benchmarks use: scikit-learn's handwritten digits.

scikit-learn ships the UCI "Optical Recognition of Handwritten Digits" set (1,797 images of
8x8 pixels, 10 classes) inside the package, so it works offline. :func:`load_digits` scales
the pixels to [0, 1], upscales each image to ``size x size`` by bilinear interpolation (the
seed models expect MNIST-like 28x28 inputs), and splits it, stratified by class with a fixed
seed, into three disjoint parts, plus calibration images drawn from the training part:

- ``train`` (65 %, 1,168 images): to train the seed models;
- ``calib`` (269 images, a stratified subset of ``train``): calibration data for quantization
  and data-aware passes (pruning reconstruction, whitened low-rank). Calibrating on training
  images is what ONNX Runtime's, Intel Neural Compressor's and NNCF's examples do; the budget
  and the reported numbers never see them;
- ``val`` (15 %, 269 images): held-out data on which a compression budget is checked (one
  image is 0.37 points, so a 0.5-point budget allows one net error);
- ``test`` (20 %, 360 images): the numbers reported in the README, never seen by any pass.

Layout ``NCHW`` (PyTorch) gives arrays ``(n, 1, size, size)``; ``NHWC`` (Keras) gives
``(n, size, size, 1)``. All images are float32; labels are int64.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import numpy as np

from onnx_compress.data import Dataset
from onnx_compress.errors import MissingDependencyError, SettingError

__all__ = ["DigitsSplits", "load_digits", "upscale_bilinear"]

Layout = Literal["NCHW", "NHWC"]
_SPLIT_FRACTIONS = {"train": 0.65, "val": 0.15, "test": 0.2}
#: calibration images per class, taken from the training part (about 15 % of all images)
_CALIB_FRACTION = 0.15


@dataclasses.dataclass(frozen=True)
class DigitsSplits:
    """Disjoint train / validation / test parts of the digits set; ``calib`` is a subset of train."""

    train: Dataset
    calib: Dataset
    val: Dataset
    test: Dataset

    def save(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``train.npz``, ``calib.npz``, ``val.npz`` and ``test.npz`` into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        return {f.name: getattr(self, f.name).save(out / f"{f.name}.npz") for f in dataclasses.fields(self)}


def upscale_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(n, h, w)`` images to ``(n, size, size)`` by bilinear interpolation.

    Output pixel ``(i, j)`` samples the input at ``(i * (h-1)/(size-1), j * (w-1)/(size-1))``
    (corners aligned), interpolating linearly between the four neighbouring pixels.
    """
    n, height, width = images.shape
    rows = np.linspace(0.0, height - 1, size)
    cols = np.linspace(0.0, width - 1, size)
    r0 = np.floor(rows).astype(int)
    c0 = np.floor(cols).astype(int)
    r1 = np.minimum(r0 + 1, height - 1)
    c1 = np.minimum(c0 + 1, width - 1)
    fr = (rows - r0)[None, :, None]
    fc = (cols - c0)[None, None, :]
    top = images[:, r0][:, :, c0] * (1 - fc) + images[:, r0][:, :, c1] * fc
    bottom = images[:, r1][:, :, c0] * (1 - fc) + images[:, r1][:, :, c1] * fc
    return top * (1 - fr) + bottom * fr


def load_digits(
    layout: Layout = "NCHW",
    *,
    input_name: str = "input",
    size: int = 28,
    seed: int = 0,
) -> DigitsSplits:
    """Load, upscale and split scikit-learn's digits (see the module docstring)."""
    if layout not in ("NCHW", "NHWC"):
        raise SettingError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if size < 8:
        raise SettingError(f"size must be >= 8, got {size}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise MissingDependencyError("scikit-learn", "dev", "the digits data set") from exc

    bunch = sklearn_digits()
    images = upscale_bilinear(bunch.images.astype(np.float64) / 16.0, size).astype(np.float32)
    images = images[:, None] if layout == "NCHW" else images[..., None]
    labels = bunch.target.astype(np.int64)

    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*_SPLIT_FRACTIONS, "calib")}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.cumsum([round(f * len(idx)) for f in _SPLIT_FRACTIONS.values()])
        bounds[-1] = len(idx)
        for name, chunk in zip(_SPLIT_FRACTIONS, np.split(idx, bounds[:-1])):
            parts[name].append(chunk)
        parts["calib"].append(parts["train"][-1][: round(_CALIB_FRACTION * len(idx))])

    def make(name: str) -> Dataset:
        idx = rng.permutation(np.concatenate(parts[name]))
        return Dataset(inputs={input_name: images[idx]}, labels=labels[idx])

    return DigitsSplits(**{name: make(name) for name in parts})
