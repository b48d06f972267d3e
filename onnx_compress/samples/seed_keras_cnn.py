"""The seed Keras CNN (``build_model``) and its training on real handwritten digits (NHWC).

Used by ``samples/seed_keras_cnn.py`` (train, save, export, check, quantize, print a table), the
tests' fixtures and the benchmarks. keras is required when this module is imported.
"""

from __future__ import annotations

import numpy as np

import onnx_compress as oc
from onnx_compress.data import Dataset
from onnx_compress.optional import require

keras = require("keras", "the seed Keras CNN sample")

__all__ = ["build_model", "predict", "train", "trained_model"]


def build_model() -> keras.Sequential:
    """The seed model: Conv2D 32, MaxPooling, Conv2D 64, MaxPooling, Flatten, Dense 128, Dense 10."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Conv2D(64, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def train(model: keras.Model, data: Dataset, *, epochs: int = 10, seed: int = 0, lr: float = 2e-3,
          batch_size: int = 64) -> list[float]:
    """Train with Adam on sparse categorical cross-entropy; returns the loss per epoch."""
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    history = model.fit(next(iter(data.inputs.values())), data.labels, epochs=epochs,
                        batch_size=batch_size, verbose=0, shuffle=True)
    return [float(v) for v in history.history["loss"]]


def predict(model: keras.Model, data: Dataset) -> np.ndarray:
    """Class predictions of the Keras model."""
    return np.asarray(model.predict(next(iter(data.inputs.values())), verbose=0)).argmax(1)


def trained_model(epochs: int = 10, seed: int = 0) -> tuple[keras.Sequential, oc.datasets.DigitsSplits]:
    """The seed model trained on the digits' train split, and the splits (NHWC)."""
    keras.utils.set_random_seed(seed)
    splits = oc.load_digits("NHWC", seed=seed)
    model = build_model()
    train(model, splits.train, epochs=epochs, seed=seed)
    return model, splits
