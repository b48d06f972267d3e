"""onnx-compress: make trained PyTorch and Keras models smaller and faster through ONNX.

Typical use::

    import onnx_compress as oc

    oc.export_torch(model, example, "model.onnx")          # or oc.export_keras(...)
    print(oc.model_stats("model.onnx"))
    score = oc.validate("model.onnx", "candidate.onnx", "val.npz", metric="top1")

The public names below are imported lazily, so ``import onnx_compress`` stays fast and never
imports torch or tensorflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnx_compress.errors import OnnxCompressError
from onnx_compress.lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "export_torch": "onnx_compress.converters.torch.export",
    "export_keras": "onnx_compress.converters.tensorflow.export",
    "load_model": "onnx_compress.model_io",
    "save_model": "onnx_compress.model_io",
    "Dataset": "onnx_compress.data",
    "load_data": "onnx_compress.data",
    "load_digits": "onnx_compress.datasets",
    "model_stats": "onnx_compress.stats",
    "compress": "onnx_compress.pipeline",
    "PipelineSettings": "onnx_compress.pipeline",
    "load_recipe": "onnx_compress.recipe",
    "recover": "onnx_compress.training.recover",
    "RecoverySettings": "onnx_compress.training.recover",
    "validate": "onnx_compress.runtime.validate",
    "Evaluator": "onnx_compress.runtime.validate",
    "benchmark": "onnx_compress.runtime.benchmark",
    "compare": "onnx_compress.runtime.benchmark",
    "SessionSettings": "onnx_compress.runtime.session",
    "deploy_triton": "onnx_compress.runtime.deploy",
    "serve": "onnx_compress.runtime.serve",
}

__all__ = ["OnnxCompressError", "__version__", *_LAZY]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from onnx_compress.converters.tensorflow.export import export_keras
    from onnx_compress.converters.torch.export import export_torch
    from onnx_compress.data import Dataset, load_data
    from onnx_compress.datasets import load_digits
    from onnx_compress.model_io import load_model, save_model
    from onnx_compress.runtime.benchmark import benchmark, compare
    from onnx_compress.runtime.deploy import deploy_triton
    from onnx_compress.runtime.serve import serve
    from onnx_compress.runtime.session import SessionSettings
    from onnx_compress.runtime.validate import Evaluator, validate
    from onnx_compress.pipeline import PipelineSettings, compress
    from onnx_compress.recipe import load_recipe
    from onnx_compress.training.recover import RecoverySettings, recover
    from onnx_compress.stats import model_stats
