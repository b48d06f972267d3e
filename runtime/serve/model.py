"""One KServe model per served name: ONNX Runtime behind KServe's v2 data plane.

KServe's model server (``kserve.ModelServer``) owns the protocol: REST v1/v2 and gRPC v2,
JSON and binary tensor data, request decoding and response encoding, health, metrics. This
module gives it :class:`OnnxRuntimeModel`, a ``kserve.Model`` whose

- ``get_input_types`` / ``get_output_types`` are the ONNX model's inputs and outputs (v2
  datatypes, ``-1`` for dynamic axes), which KServe answers at ``GET /v2/models/NAME``;
- ``predict`` checks the request against the model (:mod:`.checks`: names, datatypes, shapes,
  shared symbolic axes, ``max_batch_size``) before decoding a tensor, then runs the ONNX
  Runtime session in a thread pool (``concurrency`` calls at once), off the event loop that
  serves HTTP and gRPC.

Versions: a name may have several versions loaded (Triton's ``version_policy``). The highest
answers by default; gRPC's ``model_version`` field or the REST path ``/versions/V/`` (rewritten
by :mod:`.engine` to the header ``x-onnx-compress-model-version``) pick another.

Errors: a request that does not fit is ``kserve.errors.InvalidInput`` (HTTP 400
``{"error": ...}``, gRPC ``INVALID_ARGUMENT``); ONNX Runtime's own argument errors (a token id
outside the vocabulary) too; any other ONNX Runtime failure is ``InferenceError`` (500 /
``INTERNAL``). None of them stops the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InferenceError, InvalidInput
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from onnx_compress.errors import one_line
from onnx_compress.runtime.serve.checks import VERSION_HEADER, RequestError, check_request
from onnx_compress.runtime.serve.registry import ServedModel

__all__ = ["OnnxRuntimeModel"]


class OnnxRuntimeModel(Model):
    """Every loaded version of one model name, served by ONNX Runtime through KServe."""

    def __init__(self, versions: Sequence[ServedModel], executor: concurrent.futures.Executor) -> None:
        if not versions or len({m.name for m in versions}) != 1:
            raise ValueError("OnnxRuntimeModel takes the versions of one model name")
        super().__init__(versions[0].name)
        self.versions: dict[str, ServedModel] = {str(m.version): m for m in versions}
        self.default = max(versions, key=lambda m: m.version)
        self._executor = executor
        self.ready = True  # the sessions are loaded (and checked) before the server starts

    def load(self) -> bool:
        return self.ready

    def get_input_types(self) -> list[dict[str, Any]]:
        return self.default.tensor_metadata()[0]

    def get_output_types(self) -> list[dict[str, Any]]:
        return self.default.tensor_metadata()[1]

    def version_of(self, payload: InferRequest, headers: Mapping[str, str] | None) -> ServedModel:
        wanted = payload.model_version or (headers or {}).get(VERSION_HEADER) or ""
        if not wanted:
            return self.default
        model = self.versions.get(wanted)
        if model is None:
            loaded = ", ".join(sorted(self.versions, key=int))
            raise InvalidInput(f"model {self.name!r} has no version {wanted!r}; loaded: {loaded}")
        return model

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        if not isinstance(payload, InferRequest):  # the v1 protocol's {"instances": ...}
            raise InvalidInput("this server answers the v2 protocol only: POST /v2/models/NAME/infer")
        model = self.version_of(payload, headers)
        requested = [out.name for out in payload.request_outputs or []]
        try:
            names = check_request(model, [(i.name, i.datatype, i.shape) for i in payload.inputs], requested)
            feeds = {tensor.name: _array(tensor, model) for tensor in payload.inputs}
        except RequestError as exc:
            raise InvalidInput(str(exc)) from None
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, model.run, feeds, names)
        except InvalidArgument as exc:
            raise InvalidInput(f"ONNX Runtime refused the inputs: {one_line(exc)}") from None
        except Exception as exc:  # ORT's Fail / RuntimeException: the model failed on these inputs
            raise InferenceError(f"inference failed: {one_line(exc)}") from None
        outputs = []
        for name, result in zip(names, results):
            output = InferOutput(name=name, shape=list(result.shape), datatype=_datatype(model, name))
            output.set_data_from_numpy(np.ascontiguousarray(result), binary_data=True)  # KServe converts for JSON
            outputs.append(output)
        return InferResponse(response_id=payload.id or "", model_name=self.name, model_version=str(model.version),
                             infer_outputs=outputs, use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)


def _datatype(model: ServedModel, output: str) -> str:
    return next(spec.datatype for spec in model.outputs if spec.name == output)


def _array(tensor: Any, model: ServedModel) -> np.ndarray:
    """The input as a numpy array of the model's dtype (its datatype was checked)."""
    raw = tensor._raw_data  # binary tensor data (REST) or raw_input_contents (gRPC), as the bytes came
    spec = model.input_spec(tensor.name)
    assert spec is not None  # check_request refused unknown inputs
    if raw is not None:
        needed = math.prod(tensor.shape) * spec.dtype.itemsize
        if len(raw) != needed:
            raise RequestError(f"input {tensor.name!r}: {len(raw)} bytes of raw data, shape {list(tensor.shape)} "
                               f"of {spec.datatype} needs {needed}")
        return np.frombuffer(raw, dtype=spec.dtype.newbyteorder("<")).reshape(tensor.shape)
    try:
        given = np.asarray(tensor.data)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise RequestError(f"input {tensor.name!r}: 'data' is not a regular array ({exc})") from None
    if given.size and given.dtype.kind not in ("b" if spec.dtype.kind == "b" else "iu" if spec.dtype.kind in "iu"
                                               else "iuf"):
        raise RequestError(f"input {tensor.name!r}: JSON data of {spec.datatype} must be "
                           f"{'true/false' if spec.dtype.kind == 'b' else 'integers' if spec.dtype.kind in 'iu' else 'numbers'}")
    with np.errstate(over="ignore", invalid="ignore"):
        array = given.astype(spec.dtype)
    if spec.dtype.kind in "iu" and not np.array_equal(array, given):
        raise RequestError(f"input {tensor.name!r}: a value is out of the range of {spec.datatype}")
    if array.size != math.prod(tensor.shape):
        raise RequestError(f"input {tensor.name!r}: 'data' has {array.size} elements, "
                           f"shape {list(tensor.shape)} needs {math.prod(tensor.shape)}")
    return array.reshape(tensor.shape)
