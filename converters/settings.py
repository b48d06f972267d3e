"""How an export is done: :class:`ExportSettings`, shared by every exporter and ``onnx-compress export``.

The names, the opset, the batch axis and the parity tolerance (see
:mod:`onnx_compress.converters.parity`) mean the same for a PyTorch, a Keras and a SavedModel
export; only the default opset differs per exporter (:data:`TORCH_OPSET`, :data:`KERAS_OPSET`),
used when ``opset`` is left at None.
"""

from __future__ import annotations

import dataclasses

from onnx_compress.setting import check_fields, setting

__all__ = ["ExportSettings", "TORCH_OPSET", "KERAS_OPSET"]

#: the default opset of the PyTorch exporter: the newest every tool downstream handles (ONNX
#: Runtime's quantizer, tf2onnx); the dynamo exporter needs >= 18
TORCH_OPSET = 18
#: the default opset of tf2onnx exports (it supports up to 18)
KERAS_OPSET = 17


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """What every exporter takes (each field's help text is its declaration below)."""

    input_names: tuple[str, ...] | None = setting((), kind="names", optional=True, metavar="NAME", help="""
        ONNX input names (default: 'input' for one input)""")
    output_names: tuple[str, ...] | None = setting((), kind="names", optional=True, metavar="NAME", help="""
        ONNX output names (default: 'output' for one output)""")
    opset: int | None = setting(None, kind="int", range=">= 1", metavar="OPSET", help=f"""
        ONNX opset (default: {TORCH_OPSET} for torch, {KERAS_OPSET} for keras/saved-model)""")
    dynamic_batch: bool = setting(True, flag="--static-batch", negate=True, help="""
        a dynamic batch axis, checked at a second batch size; --static-batch: keep the example's batch
        size fixed instead""")
    atol: float = setting(1e-4, range=">= 0", metavar="ATOL", help="parity: absolute tolerance")
    rtol: float = setting(1e-4, range=">= 0", metavar="RTOL", help="""
        parity: tolerance relative to the largest output magnitude""")

    def __post_init__(self) -> None:
        check_fields(self)
