"""PyTorch side of onnx-compress. torch is imported when a function here is first called."""

from onnx_compress.converters.torch.export import export_torch

__all__ = ["export_torch"]
