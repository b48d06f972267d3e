"""Narrow students: a plain-chain network rebuilt with fewer channels / units per layer, the
student that distillation trains (:mod:`~onnx_compress.training.narrow.torch`,
:mod:`~onnx_compress.training.narrow.tensorflow`; each requires its framework inside functions)."""
