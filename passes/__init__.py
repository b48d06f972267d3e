"""Framework-neutral graph passes on ONNX models (``onnx_ir.Model``).

Every pass follows the contract in docs/architecture.md and ``passes/base.py``: typed settings
validated on construction, ``call(model)`` returning a result that reports what it did with a
truthful ``modified``, the input model never modified, and a refusal with a reason for what it
cannot do safely. ``passes/registry.py`` lists the passes recipes can name.

The names below are imported on first use (``from onnx_compress.passes import Quantize`` imports
the quantize package and what it needs, nothing else), so importing one pass, or the registry,
does not import every pass and its libraries (ONNX Runtime's quantization tools, onnxscript's
rewriter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnx_compress.lazy import lazy_attributes

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "CompressionPass": "onnx_compress.passes.base",
    "CompressionResult": "onnx_compress.passes.base",
    "PassSettings": "onnx_compress.passes.base",
    "BudgetAwareSettings": "onnx_compress.passes.base",
    "Fuse": "onnx_compress.passes.fuse",
    "FuseResult": "onnx_compress.passes.fuse",
    "FuseSettings": "onnx_compress.passes.fuse",
    "Normalize": "onnx_compress.passes.normalize",
    "NormalizeResult": "onnx_compress.passes.normalize",
    "NormalizeSettings": "onnx_compress.passes.normalize",
    "PruneStructured": "onnx_compress.passes.prune",
    "PruneStructuredResult": "onnx_compress.passes.prune",
    "PruneStructuredSettings": "onnx_compress.passes.prune",
    "PruneUnstructured": "onnx_compress.passes.prune",
    "PruneUnstructuredResult": "onnx_compress.passes.prune",
    "PruneUnstructuredSettings": "onnx_compress.passes.prune",
    "LowRank": "onnx_compress.passes.lowrank",
    "LowRankLayer": "onnx_compress.passes.lowrank",
    "LowRankResult": "onnx_compress.passes.lowrank",
    "LowRankSettings": "onnx_compress.passes.lowrank",
    "Quantize": "onnx_compress.passes.quantize",
    "QuantizeResult": "onnx_compress.passes.quantize",
    "QuantizeSettings": "onnx_compress.passes.quantize",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from onnx_compress.passes.base import BudgetAwareSettings, CompressionPass, CompressionResult, PassSettings
    from onnx_compress.passes.fuse import Fuse, FuseResult, FuseSettings
    from onnx_compress.passes.lowrank import LowRank, LowRankLayer, LowRankResult, LowRankSettings
    from onnx_compress.passes.normalize import Normalize, NormalizeResult, NormalizeSettings
    from onnx_compress.passes.prune import (
        PruneStructured,
        PruneStructuredResult,
        PruneStructuredSettings,
        PruneUnstructured,
        PruneUnstructuredResult,
        PruneUnstructuredSettings,
    )
    from onnx_compress.passes.quantize import Quantize, QuantizeResult, QuantizeSettings
