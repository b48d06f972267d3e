"""The KServe v2 / Open Inference Protocol codec: request bodies to numpy, results to bodies.

This module knows the wire format only; it does not know any model (checking a request
against a model is :mod:`onnx_compress.runtime.serve.inference`).

Request body (``POST /v2/models/NAME/infer``)::

    {"id": "optional",
     "parameters": {"binary_data_output": false},
     "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
     "outputs": [{"name": "output", "parameters": {"binary_data": false}}]}

- ``data`` is the row-major tensor contents, flat or nested; JSON numbers for numeric types,
  ``true``/``false`` for ``BOOL``. Integers must be integral and in range of the datatype.
- Binary tensor data extension: when the ``Inference-Header-Content-Length`` header is present,
  the body is that many bytes of JSON followed by raw little-endian tensor bytes, in the order
  of the inputs that carry ``"parameters": {"binary_data_size": N}`` (N = element count x
  element size, checked). Outputs are returned in binary when the output's ``binary_data``
  parameter, or else the request's ``binary_data_output`` parameter, is true; the response
  then carries the same header and ``binary_data_size`` on each such output.
- Not supported (answered 400): ``BYTES`` and ``BF16`` tensors, shared-memory parameters,
  the classification extension.

Every problem raises :class:`RequestError` carrying an HTTP status (400 unless stated) and a
message; the server answers ``{"error": message}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from onnx_compress.errors import DataError
from onnx_compress.runtime.tensor_types import TensorType, by_datatype, by_numpy

__all__ = [
    "BINARY_HEADER",
    "RequestError",
    "Tensor",
    "RequestedOutput",
    "InferRequest",
    "decode_infer_request",
    "encode_infer_response",
    "error_body",
]

#: the binary tensor data extension's header: byte length of the JSON part of the body
BINARY_HEADER = "Inference-Header-Content-Length"
_LITTLE = sys.byteorder == "little"


class RequestError(DataError):
    """A request the server cannot answer: ``status`` is the HTTP status (4xx), the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One decoded input tensor, in the datatype the request declared."""

    name: str
    datatype: str
    array: np.ndarray


@dataclasses.dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` is None when the request default applies."""

    name: str
    binary: bool | None


@dataclasses.dataclass(frozen=True)
class InferRequest:
    """A decoded inference request."""

    id: str | None
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output of the model
    binary_output: bool  # the request-level ``binary_data_output`` parameter


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    params = holder.get("parameters", {})
    if params is None:
        return {}
    return _object(params, f"{what} 'parameters'")


def _flag(params: dict[str, Any], key: str, what: str) -> bool | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise RequestError(f"{what} parameter {key!r} must be true or false, got {value!r}")
    return value


def _refuse_unsupported(params: dict[str, Any], what: str) -> None:
    shared = [key for key in params if key.startswith("shared_memory_")]
    if shared:
        raise RequestError(f"{what}: shared-memory tensors are not supported by this server ({shared[0]})")
    if "classification" in params:
        raise RequestError(f"{what}: the classification extension is not supported by this server")


def _tensor_type(datatype: Any, what: str) -> TensorType:
    if not isinstance(datatype, str):
        raise RequestError(f"{what} needs a 'datatype' string such as \"FP32\", got {datatype!r}")
    found = by_datatype(datatype)
    if found is None:
        raise RequestError(f"{what} has unknown datatype {datatype!r}")
    if found.numpy is None or found.datatype == "BYTES":
        raise RequestError(f"{what}: datatype {datatype} is not supported by this server")
    return found


def _shape(shape: Any, what: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape
    ):
        raise RequestError(f"{what} needs a 'shape' list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _from_json(data: Any, tensor_type: TensorType, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Decode JSON tensor data (flat or nested, row-major) to the declared type and shape."""
    if not isinstance(data, list):
        raise RequestError(f"{what}: 'data' must be a JSON array, got {type(data).__name__}")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise RequestError(f"{what}: 'data' is not a regular array ({exc})") from None
    count = math.prod(shape)
    if raw.size != count:
        raise RequestError(f"{what}: 'data' has {raw.size} elements, shape {list(shape)} needs {count}")
    dtype = tensor_type.numpy
    assert dtype is not None  # _tensor_type refused the others
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    kind = raw.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise RequestError(f"{what}: BOOL data must be true/false values")
        return raw.reshape(shape)
    if dtype.kind in "iu":
        if kind not in "iu":
            raise RequestError(f"{what}: {tensor_type.datatype} data must be integers")
        with np.errstate(over="ignore"):
            array = raw.astype(dtype)
        if not np.array_equal(array, raw):
            raise RequestError(f"{what}: a value is out of the range of {tensor_type.datatype}")
        return array.reshape(shape)
    if kind not in "iuf":
        raise RequestError(f"{what}: {tensor_type.datatype} data must be numbers")
    return raw.astype(dtype).reshape(shape)


def _from_binary(chunk: memoryview, tensor_type: TensorType, shape: tuple[int, ...]) -> np.ndarray:
    dtype = tensor_type.numpy
    assert dtype is not None
    array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<"))
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        array = array.astype(dtype)
    return array.reshape(shape)


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes | memoryview, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if header_length < 0 or header_length > len(body):
        raise RequestError(
            f"{BINARY_HEADER} is {header_length}, but the request body has {len(body)} bytes"
        )
    view = memoryview(body)
    return view[:header_length], view[header_length:]


def decode_infer_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an inference request body (see the module docstring). Raises RequestError."""
    json_part, binary = _split_body(body, header_length)
    try:
        document = json.loads(bytes(json_part))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise RequestError(f"malformed JSON in the request body: {exc}") from None
    request = _object(document, "the request body")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"'id' must be a string, got {request_id!r}")
    params = _parameters(request, "the request")
    binary_output = bool(_flag(params, "binary_data_output", "request"))

    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError("the request needs an 'inputs' list with at least one tensor")
    inputs: list[Tensor] = []
    seen: set[str] = set()
    offset = 0
    for index, item in enumerate(raw_inputs):
        entry = _object(item, f"inputs[{index}]")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise RequestError(f"inputs[{index}] needs a 'name' string")
        what = f"input {name!r}"
        if name in seen:
            raise RequestError(f"{what} appears twice in the request")
        seen.add(name)
        tensor_type = _tensor_type(entry.get("datatype"), what)
        shape = _shape(entry.get("shape"), what)
        tensor_params = _parameters(entry, what)
        _refuse_unsupported(tensor_params, what)
        size = tensor_params.get("binary_data_size")
        has_data = "data" in entry
        if size is not None:
            if has_data:
                raise RequestError(f"{what} has both 'data' and binary_data_size; send one")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise RequestError(f"{what}: binary_data_size must be a non-negative integer, got {size!r}")
            if header_length is None:
                raise RequestError(f"{what} declares binary data, but the request has no {BINARY_HEADER} header")
            assert tensor_type.numpy is not None
            needed = math.prod(shape) * tensor_type.numpy.itemsize
            if size != needed:
                raise RequestError(
                    f"{what}: binary_data_size is {size} bytes, shape {list(shape)} of "
                    f"{tensor_type.datatype} needs {needed}"
                )
            if offset + size > len(binary):
                raise RequestError(
                    f"{what}: the binary data ends after {len(binary)} bytes, before this input's {size} bytes"
                )
            array = _from_binary(binary[offset : offset + size], tensor_type, shape)
            offset += size
        elif has_data:
            array = _from_json(entry["data"], tensor_type, shape, what)
        else:
            raise RequestError(f"{what} has no 'data' and no binary_data_size")
        inputs.append(Tensor(name=name, datatype=tensor_type.datatype, array=array))
    if offset != len(binary):
        raise RequestError(
            f"the request carries {len(binary)} bytes of binary data, but its inputs declare {offset}"
        )

    outputs: tuple[RequestedOutput, ...] | None = None
    raw_outputs = request.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise RequestError("'outputs' must be a list of {\"name\": ...} objects")
        requested = []
        for index, item in enumerate(raw_outputs):
            entry = _object(item, f"outputs[{index}]")
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise RequestError(f"outputs[{index}] needs a 'name' string")
            output_params = _parameters(entry, f"output {name!r}")
            _refuse_unsupported(output_params, f"output {name!r}")
            requested.append(RequestedOutput(name, _flag(output_params, "binary_data", f"output {name!r}")))
        outputs = tuple(requested) or None
    return InferRequest(id=request_id, inputs=tuple(inputs), outputs=outputs, binary_output=binary_output)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for ``(name, array, binary)`` outputs.

    JSON outputs carry their data flat in row-major order; binary outputs carry
    ``binary_data_size`` and their bytes follow the JSON part, whose length is given in the
    ``Inference-Header-Content-Length`` header.
    """
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array, binary in outputs:
        tensor_type = by_numpy(array.dtype)
        if tensor_type is None or tensor_type.datatype == "BYTES":
            raise RequestError(f"output {name!r} has dtype {array.dtype}, which this server cannot send", 500)
        entry: dict[str, Any] = {"name": name, "datatype": tensor_type.datatype, "shape": list(array.shape)}
        if binary:
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request_id is not None:
        document["id"] = request_id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        BINARY_HEADER: str(len(header)),
    }


def error_body(message: str) -> dict[str, str]:
    """The protocol's error object."""
    return {"error": message}
