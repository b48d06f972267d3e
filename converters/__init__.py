"""Framework converters: the ONLY code in onnx-compress that imports torch or tensorflow.

- :mod:`onnx_compress.converters.torch`: PyTorch export, distillation, narrow students;
- :mod:`onnx_compress.converters.tensorflow`: TensorFlow/Keras export, distillation, narrow students;
- :mod:`onnx_compress.converters.parity`: the parity check every export ends with;
- :mod:`onnx_compress.converters.distillation`: what both distillation trainers share (the loss
  conventions, output kinds, ONNX teachers, checks, history); imports no framework.

The frameworks are optional extras, imported on first use (``onnx_compress.optional``).
"""
