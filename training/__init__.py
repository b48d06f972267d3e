"""Training: recovery of compressed ONNX graphs, distillation into framework students, narrow students.

Everything here needs a framework (``pip install "onnx-compress[torch]"`` / ``[tensorflow]``),
imported through :func:`onnx_compress.optional.require`; ``passes/`` and ``runtime/`` never import
this room, and the pipeline and CLI reach it lazily (inside functions).

Recovery on ONNX graphs (torch, required when a module is imported):

- :mod:`~onnx_compress.training.bridge`: an ONNX graph as a trainable torch module, written back
  by initializer name (``ops.py`` holds the operators).
- :mod:`~onnx_compress.training.losses`: the loss and metric per output kind.
- :mod:`~onnx_compress.training.recover`: the recovery loop (:func:`recover`).
- :mod:`~onnx_compress.training.stage`: the ``recover`` recipe stage.

Distillation into a PyTorch or Keras student (the framework required inside functions only):

- :mod:`~onnx_compress.training.distill`: the shared part (``common``, the epoch loop ``loop``)
  and the two trainers (``torch``, ``tensorflow``);
- :mod:`~onnx_compress.training.narrow`: narrow students for them (``torch``, ``tensorflow``).
"""
