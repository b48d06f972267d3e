"""Framework-neutral graph passes on ONNX models (``onnx_ir.Model``).

Every pass follows the contract in docs/architecture.md and ``passes/base.py``: typed settings
validated on construction, ``call(model)`` returning a result that reports what it did with a
truthful ``modified``, the input model never modified, and a refusal with a reason for what it
cannot do safely. ``passes/registry.py`` lists the passes recipes can name.
"""

from onnx_compress.passes.base import CompressionPass, CompressionResult, PassSettings
from onnx_compress.passes.fuse import Fuse, FuseResult, FuseSettings
from onnx_compress.passes.normalize import Normalize, NormalizeResult, NormalizeSettings
from onnx_compress.passes.prune import (
    PruneStructured,
    PruneStructuredResult,
    PruneStructuredSettings,
    PruneUnstructured,
    PruneUnstructuredResult,
    PruneUnstructuredSettings,
)
from onnx_compress.passes.lowrank import LowRank, LowRankLayer, LowRankResult, LowRankSettings
from onnx_compress.passes.quantize import Quantize, QuantizeResult, QuantizeSettings

__all__ = [
    "CompressionPass",
    "CompressionResult",
    "Fuse",
    "FuseResult",
    "FuseSettings",
    "LowRank",
    "LowRankLayer",
    "LowRankResult",
    "LowRankSettings",
    "Normalize",
    "NormalizeResult",
    "NormalizeSettings",
    "PassSettings",
    "PruneStructured",
    "PruneStructuredResult",
    "PruneStructuredSettings",
    "PruneUnstructured",
    "PruneUnstructuredResult",
    "PruneUnstructuredSettings",
    "Quantize",
    "QuantizeResult",
    "QuantizeSettings",
]
