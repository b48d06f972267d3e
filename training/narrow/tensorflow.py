"""Build a narrower student from a plain Keras teacher: every Conv/Dense width times a factor.

What "plain" means
    A built ``keras.Sequential`` model (it has an input shape: ``keras.Input`` first, or called
    once) whose layers are all

    - width layers: ``Conv1D/2D/3D`` (``groups=1``) and ``Dense``: their ``filters`` / ``units``
      are scaled;
    - layers whose size Keras infers from their input: ``BatchNormalization``,
      ``LayerNormalization``;
    - width-independent layers: activations (``Activation``, ``ReLU``, ``LeakyReLU``, ``ELU``,
      ``Softmax``), pooling (max / average / global / adaptive), dropout, ``Flatten``, zero-padding
      and cropping, ``Rescaling``, ``Identity``.

    Functional and subclassed models (which may branch), and every other layer (``Reshape``
    encodes a width, ``DepthwiseConv2D``/``SeparableConv2D``/grouped convolutions tie channels
    together, recurrent, attention and embedding layers...) are refused with the layer named.

How
    A new ``Sequential`` with the teacher's input shape and dtype, built from every layer's
    ``get_config()`` (same kernel sizes, strides, activations, initializers, names) with
    ``filters`` / ``units`` scaled to ``max(1, round(width * factor))``, except the last width
    layer, which keeps the teacher's output size. Keras infers every input size, so a ``Dense``
    after ``Flatten`` follows the narrower convolutions by itself. The weights are new (the
    initializers' draws: call ``keras.utils.set_random_seed`` first for a reproducible student);
    the teacher is not modified. The student's output shape is checked against the teacher's.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from onnx_compress.errors import SettingError, UnsupportedModelError
from onnx_compress.optional import require

__all__ = ["narrow_student"]

logger = logging.getLogger(__name__)

_WIDTH = {"Conv1D": "filters", "Conv2D": "filters", "Conv3D": "filters", "Dense": "units"}
_FOLLOW = ("BatchNormalization", "LayerNormalization")
_WIDTH_FREE = (
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Identity", "Rescaling",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
    "GaussianNoise", "AlphaDropout", "Flatten",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D", "AdaptiveAveragePooling3D",
    "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
)


def _layer_class(keras: Any, name: str) -> Any:
    return getattr(keras.layers, name, None)


def narrow_student(teacher: Any, factor: float = 0.5) -> Any:
    """A new ``keras.Sequential`` like ``teacher`` with every Conv/Dense width scaled by ``factor``.

    Args:
        teacher: a built, plain ``keras.Sequential`` (see the module docstring); not modified.
        factor: the width multiplier (> 0), e.g. 0.5 for a half-width student.

    Raises:
        SettingError: ``factor`` is not a positive number, ``teacher`` is not a Keras model.
        UnsupportedModelError: the teacher is not plain; the message names the layer and why.
    """
    keras = require("keras", "building a narrow Keras student")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise SettingError(f"factor must be a number > 0 (e.g. 0.5 for half width), got {factor!r}")
    if not isinstance(teacher, keras.Model):
        raise SettingError(f"teacher must be a keras.Model, got {type(teacher).__name__}")
    if not isinstance(teacher, keras.Sequential):
        raise UnsupportedModelError(
            f"{type(teacher).__name__} model {teacher.name!r}: only keras.Sequential models are narrowed "
            "(a functional or subclassed model may branch); rebuild it as a Sequential"
        )
    try:
        inputs = list(teacher.inputs)
    except (AttributeError, ValueError):
        inputs = []
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"Sequential model {teacher.name!r} is not built (no input shape); start it with keras.Input(shape=...)"
        )

    layers = list(teacher.layers)
    width_layers = [layer for layer in layers if type(layer) is _layer_class(keras, type(layer).__name__)
                    and type(layer).__name__ in _WIDTH]
    if not width_layers:
        raise UnsupportedModelError(f"{teacher.name!r} has no Conv or Dense layer to narrow")
    new_layers = [keras.Input(shape=tuple(inputs[0].shape[1:]), dtype=inputs[0].dtype)]
    changes = []
    for layer in layers:
        kind = type(layer).__name__
        where = f"layer {layer.name!r} ({kind})"
        if type(layer) is not _layer_class(keras, kind):
            raise UnsupportedModelError(
                f"{where} is a custom layer class; narrow_student only rebuilds Keras' own layers"
            )
        config = layer.get_config()
        if kind in _WIDTH:
            key = _WIDTH[kind]
            if kind.startswith("Conv") and config.get("groups", 1) != 1:
                raise UnsupportedModelError(f"{where} has groups={config['groups']}: grouped convolutions are not narrowed")
            if layer is not width_layers[-1]:
                old = int(config[key])
                config[key] = max(1, int(round(old * factor)))
                changes.append(f"{layer.name} {old}->{config[key]}")
        elif kind not in _FOLLOW and kind not in _WIDTH_FREE:
            raise UnsupportedModelError(
                f"{where} is not supported by narrow_student (supported: Conv1D/2D/3D, Dense, "
                "normalization, activations, pooling, dropout, Flatten, padding, cropping)"
            )
        new_layers.append(type(layer).from_config(config))
    student = keras.Sequential(new_layers, name=f"{teacher.name}_narrow")
    if tuple(student.outputs[0].shape[1:]) != tuple(teacher.outputs[0].shape[1:]):
        raise UnsupportedModelError(
            f"the narrowed student outputs shape {tuple(student.outputs[0].shape)}, the teacher "
            f"{tuple(teacher.outputs[0].shape)}"
        )
    logger.info("narrow Keras student (factor %g): %s", factor, ", ".join(changes))
    return student
