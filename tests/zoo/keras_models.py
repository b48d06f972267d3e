"""Keras Applications with random weights at small input sizes, exported by tf2onnx (through the
project's ``export_keras``, parity-checked). No downloads: ``weights=None``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["KERAS_ZOO", "export"]

#: name -> (keras.applications constructor name, keyword arguments, input size H = W)
KERAS_ZOO: dict[str, tuple[str, dict, int]] = {
    "keras_mobilenetv2": ("MobileNetV2", {"alpha": 0.35}, 96),
    "keras_mobilenetv3small": ("MobileNetV3Small", {"alpha": 0.75, "minimalistic": False}, 96),
    "keras_resnet50": ("ResNet50", {}, 64),
    # EfficientNetV2: V1's built-in Normalization layer exports its (unadapted) statistics as extra inputs
    "keras_efficientnetv2b0": ("EfficientNetV2B0", {}, 64),
    "keras_densenet121": ("DenseNet121", {}, 64),
}


def export(name: str, path: Path, seed: int = 0) -> Path:
    import keras

    import onnx_compress as oc

    constructor, kwargs, size = KERAS_ZOO[name]
    keras.utils.set_random_seed(seed)
    extra = {"include_preprocessing": False} if "MobileNetV3" in constructor or "V2B" in constructor else {}
    model = getattr(keras.applications, constructor)(weights=None, input_shape=(size, size, 3), classes=10,
                                                     **kwargs, **extra)
    example = {"input": np.random.default_rng(seed).random((2, size, size, 3), dtype=np.float32)}
    oc.export_keras(model, path, input_names=["input"], output_names=["output"], example_inputs=example)
    return path
