"""TensorFlow/Keras side of onnx-compress. tensorflow is imported when a function is first called."""

from onnx_compress.converters.tensorflow.distill import distill
from onnx_compress.converters.tensorflow.export import export_keras, load_keras_model
from onnx_compress.converters.tensorflow.narrow import narrow_student

__all__ = ["distill", "export_keras", "load_keras_model", "narrow_student"]
