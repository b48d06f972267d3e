"""Framework converters: export to ONNX, and the parity check every export ends with.

- :mod:`onnx_compress.converters.torch`: PyTorch export;
- :mod:`onnx_compress.converters.tensorflow`: TensorFlow/Keras export;
- :mod:`onnx_compress.converters.parity`: the parity check every export ends with.

The frameworks are optional extras, imported on first use (``onnx_compress.optional``). Training
in a framework (distillation, narrow students, recovery) is in :mod:`onnx_compress.training`.
"""
