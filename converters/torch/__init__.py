"""PyTorch side of onnx-compress. torch is imported when a function here is first called."""

from onnx_compress.converters.torch.distill import distill
from onnx_compress.converters.torch.export import export_torch
from onnx_compress.converters.torch.narrow import narrow_student

__all__ = ["distill", "export_torch", "narrow_student"]
