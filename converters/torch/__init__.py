"""PyTorch side of onnx-compress: export (with its parity check). torch is imported when a function
here is first called. Distillation and narrow students live in the training room
(:mod:`onnx_compress.training.distill.torch`, :mod:`onnx_compress.training.narrow.torch`)."""

from onnx_compress.converters.torch.export import export_torch

__all__ = ["export_torch"]
