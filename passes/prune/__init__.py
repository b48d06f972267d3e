"""Pruning passes: unstructured sparsity and dependency-aware structured pruning.

- :class:`PruneUnstructured` zeroes the smallest weights (per layer, global, or N:M). Dense
  ONNX Runtime kernels gain no speed from zeros; the gain is the size of the compressed file.
- :class:`PruneStructured` removes whole channels and neurons and everything coupled to them
  (coupling graph, importance, schedule and slicing in their own modules), so the model gets
  smaller and faster.
"""

from onnx_compress.passes.prune.prune_structured_pass import (
    GroupReport,
    PruneStructured,
    PruneStructuredResult,
    PruneStructuredSettings,
)
from onnx_compress.passes.prune.prune_unstructured_pass import (
    LayerSparsity,
    PruneUnstructured,
    PruneUnstructuredResult,
    PruneUnstructuredSettings,
)

__all__ = [
    "GroupReport",
    "LayerSparsity",
    "PruneStructured",
    "PruneStructuredResult",
    "PruneStructuredSettings",
    "PruneUnstructured",
    "PruneUnstructuredResult",
    "PruneUnstructuredSettings",
]
