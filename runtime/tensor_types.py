"""One table of tensor element types: ONNX <-> numpy <-> Triton config <-> KServe v2 datatype.

Triton's ``config.pbtxt`` names types ``TYPE_FP32``, ``TYPE_INT64``, ...; the KServe v2 / Open
Inference Protocol names the same types ``FP32``, ``INT64``, ... (``TYPE_STRING`` is ``BYTES``
on the wire). Deploy and serve both read this table, so the config a model is deployed with and
the metadata a served model reports always agree.

``BF16`` has no numpy dtype: deploy writes ``TYPE_BF16``, but the local server refuses to load
such a model. ``BYTES`` (ONNX ``STRING``) is written by deploy; the local server does not serve
string tensors (see :mod:`onnx_compress.runtime.serve`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

__all__ = ["TensorType", "TENSOR_TYPES", "by_onnx", "by_datatype", "by_numpy"]


@dataclasses.dataclass(frozen=True)
class TensorType:
    """One element type under its four names."""

    onnx: ir.DataType
    numpy: np.dtype | None  # None: no numpy equivalent (bfloat16)
    triton: str  # config.pbtxt DataType enum name, e.g. "TYPE_FP32"
    datatype: str  # KServe v2 / Open Inference Protocol name, e.g. "FP32"


def _t(onnx_type: ir.DataType, numpy: str | None, name: str, triton: str | None = None) -> TensorType:
    return TensorType(
        onnx=onnx_type,
        numpy=None if numpy is None else np.dtype(numpy),
        triton=triton or f"TYPE_{name}",
        datatype=name,
    )


TENSOR_TYPES: tuple[TensorType, ...] = (
    _t(ir.DataType.BOOL, "bool", "BOOL"),
    _t(ir.DataType.UINT8, "uint8", "UINT8"),
    _t(ir.DataType.UINT16, "uint16", "UINT16"),
    _t(ir.DataType.UINT32, "uint32", "UINT32"),
    _t(ir.DataType.UINT64, "uint64", "UINT64"),
    _t(ir.DataType.INT8, "int8", "INT8"),
    _t(ir.DataType.INT16, "int16", "INT16"),
    _t(ir.DataType.INT32, "int32", "INT32"),
    _t(ir.DataType.INT64, "int64", "INT64"),
    _t(ir.DataType.FLOAT16, "float16", "FP16"),
    _t(ir.DataType.FLOAT, "float32", "FP32"),
    _t(ir.DataType.DOUBLE, "float64", "FP64"),
    _t(ir.DataType.BFLOAT16, None, "BF16"),
    _t(ir.DataType.STRING, "object", "BYTES", triton="TYPE_STRING"),
)

_BY_ONNX = {t.onnx: t for t in TENSOR_TYPES}
_BY_DATATYPE = {t.datatype: t for t in TENSOR_TYPES}
_BY_NUMPY = {t.numpy: t for t in TENSOR_TYPES if t.numpy is not None}


def by_onnx(onnx_type: ir.DataType) -> TensorType | None:
    """The entry of an ONNX element type, or None for types Triton has no name for."""
    return _BY_ONNX.get(onnx_type)


def by_datatype(datatype: str) -> TensorType | None:
    """The entry of a KServe v2 datatype name (``"FP32"``), or None if unknown."""
    return _BY_DATATYPE.get(datatype)


def by_numpy(dtype: np.dtype) -> TensorType | None:
    """The entry of a numpy dtype, or None if the protocol has no name for it."""
    return _BY_NUMPY.get(np.dtype(dtype))
