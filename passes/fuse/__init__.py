"""Transformer fusions for ONNX Runtime (``core.py``) and the residual-norm choice
(``residual_norm.py``: ONNX Runtime's fused skip-LayerNorm kernel or Sum + LayerNormalization,
whichever runs faster on this CPU)."""

from onnx_compress.passes.fuse.core import Fuse, FuseResult, FuseSettings

__all__ = ["Fuse", "FuseResult", "FuseSettings"]
