"""TensorFlow/Keras side of onnx-compress. tensorflow is imported when a function is first called."""

from onnx_compress.converters.tensorflow.export import export_keras, load_keras_model

__all__ = ["export_keras", "load_keras_model"]
