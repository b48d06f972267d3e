"""The passes a recipe may name, by recipe name; a pass's module is imported when a recipe names it.

Add a line here when a pass lands; ``tests/passes/test_registry.py`` checks that every entry
imports and that its ``name`` matches its key. ``onnx_compress.passes`` exports its names lazily
too, so importing this registry imports no pass: a recipe of pruning passes never loads the
quantization tools (tested).
"""

from __future__ import annotations

import importlib

from onnx_compress.errors import RecipeError
from onnx_compress.passes.base import CompressionPass

__all__ = ["PASS_PATHS", "pass_class", "pass_names"]

#: recipe name -> "module:Class"
PASS_PATHS: dict[str, str] = {
    "normalize": "onnx_compress.passes.normalize:Normalize",
    "fuse": "onnx_compress.passes.fuse:Fuse",
    "prune_structured": "onnx_compress.passes.prune.prune_structured_pass:PruneStructured",
    "prune_unstructured": "onnx_compress.passes.prune.prune_unstructured_pass:PruneUnstructured",
    "prune_transformer": "onnx_compress.passes.prune.transformer:PruneTransformer",
    "lowrank": "onnx_compress.passes.lowrank:LowRank",
    "quantize": "onnx_compress.passes.quantize:Quantize",
    # needs torch: lives in the training room, imported only when a recipe names it
    "recover": "onnx_compress.training.stage:Recover",
}


def pass_names() -> list[str]:
    return sorted(PASS_PATHS)


def pass_class(name: str) -> type[CompressionPass]:
    """The pass class a recipe names; RecipeError naming the valid passes otherwise."""
    if name not in PASS_PATHS:
        raise RecipeError(f"unknown pass {name!r}; valid passes: {', '.join(pass_names())}")
    module_name, _, class_name = PASS_PATHS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
