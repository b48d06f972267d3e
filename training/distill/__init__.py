"""Knowledge distillation into a PyTorch or a Keras student, from a framework or an ONNX teacher.

- :mod:`~onnx_compress.training.distill.common`: what both trainers share before training (the
  loss conventions, settings, history, output kinds, the ONNX teacher, the checks); no framework;
- :mod:`~onnx_compress.training.distill.loop`: the one epoch / validation loop both run, with the
  framework's batch step injected; no framework;
- :mod:`~onnx_compress.training.distill.torch` and :mod:`~onnx_compress.training.distill.tensorflow`:
  ``distill(teacher, student, train_data, ...)``, each requiring its framework inside functions
  (``onnx_compress.optional.require``).
"""
