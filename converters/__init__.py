"""Framework converters: the ONLY code in onnx-compress that imports torch or tensorflow.

- :mod:`onnx_compress.converters.torch`: PyTorch export (and distillation);
- :mod:`onnx_compress.converters.tensorflow`: TensorFlow/Keras export (and distillation);
- :mod:`onnx_compress.converters.parity`: the parity check every export ends with.

The frameworks are optional extras, imported on first use (``onnx_compress.optional``).
"""
