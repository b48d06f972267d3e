"""Transformer fusions for ONNX Runtime (``fuse_pass.py``) and the residual-norm choice
(``residual_norm.py``: ONNX Runtime's fused skip-LayerNorm kernel or Sum + LayerNormalization,
whichever runs faster on this CPU)."""

from onnx_compress.passes.fuse.fuse_pass import Fuse, FuseResult, FuseSettings

__all__ = ["Fuse", "FuseResult", "FuseSettings"]
