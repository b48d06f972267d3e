"""Training on ONNX graphs (recovery by distillation from the original model).

This room needs torch (``pip install "onnx-compress[torch]"``), imported lazily through
:func:`onnx_compress.optional.require` when a module here is imported; ``passes/`` and
``runtime/`` never import it, and the pipeline and CLI reach it lazily.

- :mod:`~onnx_compress.training.bridge`: an ONNX graph as a trainable torch module, written back
  by initializer name (``ops.py`` holds the operators).
- :mod:`~onnx_compress.training.losses`: the loss and metric per output kind.
- :mod:`~onnx_compress.training.recover`: the recovery loop (:func:`recover`).
- :mod:`~onnx_compress.training.stage`: the ``recover`` recipe stage.
"""
