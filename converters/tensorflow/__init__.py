"""TensorFlow/Keras side of onnx-compress: export (with its parity check). tensorflow is imported
when a function is first called. Distillation and narrow students live in the training room
(:mod:`onnx_compress.training.distill.tensorflow`, :mod:`onnx_compress.training.narrow.tensorflow`)."""

from onnx_compress.converters.tensorflow.export import export_keras, load_keras_model

__all__ = ["export_keras", "load_keras_model"]
