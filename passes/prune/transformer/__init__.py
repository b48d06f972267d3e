"""Structured pruning of transformer encoders: attention heads, FFN neurons, whole layers.

:class:`PruneTransformer` (recipe name ``prune_transformer``) finds the encoder layers
(:mod:`.detect`), removes whole layers (:mod:`.layers`), ranks heads and neurons
(:mod:`.importance`) and cuts them (:mod:`.cuts`), verifying every cut; see :mod:`.prune_transformer_pass`.
:func:`find_structure` lists a model's prunable groups (``onnx-compress inspect``).
"""

from onnx_compress.passes.prune.transformer.detect import TransformerStructure, find_structure
from onnx_compress.passes.prune.transformer.prune_transformer_pass import (
    LayerReport,
    PruneTransformer,
    PruneTransformerResult,
    PruneTransformerSettings,
)

__all__ = [
    "LayerReport",
    "PruneTransformer",
    "PruneTransformerResult",
    "PruneTransformerSettings",
    "TransformerStructure",
    "find_structure",
]
