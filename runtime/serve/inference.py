"""One inference request, end to end: decode, check against the model, run, encode.

:func:`infer` is synchronous and self-contained (the server runs it in a worker thread, off the
event loop). Before ONNX Runtime sees a tensor, the request is checked against the model:

- every model input present, no unknown or duplicate input (400, naming the model's inputs);
- each input's datatype equal to the model's (no silent casts);
- rank equal, static axes equal, and the same size wherever two inputs share a symbolic axis
  name (e.g. MiniLM's ``batch`` and ``sequence``);
- the first axis at most the config's ``max_batch_size`` when it is > 0;
- requested outputs exist.

ONNX Runtime's own argument errors (e.g. a token id outside the vocabulary) are answered 400
with its first message line; any other runtime failure is 500. Neither stops the server.
"""

from __future__ import annotations

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from onnx_compress.errors import one_line
from onnx_compress.runtime.serve.protocol import (
    InferRequest,
    RequestError,
    decode_infer_request,
    encode_infer_response,
)
from onnx_compress.runtime.serve.registry import ServedModel

__all__ = ["check_request", "infer"]


def _expected(model: ServedModel) -> str:
    return "; ".join(spec.describe() for spec in model.inputs)


def check_request(model: ServedModel, request: InferRequest) -> tuple[dict[str, np.ndarray], list[tuple[str, bool]]]:
    """The session feeds and ``(output name, binary)`` pairs for a request, or RequestError."""
    given = {tensor.name: tensor for tensor in request.inputs}
    unknown = [name for name in given if model.input_spec(name) is None]
    if unknown:
        raise RequestError(f"model {model.name!r} has no input {unknown[0]!r}; its inputs are {_expected(model)}")
    missing = [spec.name for spec in model.inputs if spec.name not in given]
    if missing:
        raise RequestError(f"missing input {missing[0]!r} for model {model.name!r}; its inputs are {_expected(model)}")
    symbols: dict[str, tuple[int, str]] = {}
    feeds: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        tensor = given[spec.name]
        shape = tensor.array.shape
        if tensor.datatype != spec.datatype:
            raise RequestError(
                f"input {spec.name!r} has datatype {tensor.datatype}, model {model.name!r} expects {spec.datatype}"
            )
        if len(shape) != len(spec.shape):
            raise RequestError(
                f"input {spec.name!r} has shape {list(shape)} (rank {len(shape)}), "
                f"model {model.name!r} expects {spec.protocol_shape()} (rank {len(spec.shape)})"
            )
        for axis, (got, want) in enumerate(zip(shape, spec.shape)):
            if isinstance(want, int) and got != want:
                raise RequestError(
                    f"input {spec.name!r} has shape {list(shape)}, model {model.name!r} expects "
                    f"{spec.protocol_shape()} (axis {axis} must be {want})"
                )
            if isinstance(want, str):
                first = symbols.setdefault(want, (got, spec.name))
                if first[0] != got:
                    raise RequestError(
                        f"axis {want!r} is {first[0]} in input {first[1]!r} but {got} in input {spec.name!r}"
                    )
        if model.max_batch > 0 and shape and shape[0] > model.max_batch:
            raise RequestError(
                f"input {spec.name!r} has batch size {shape[0]}, model {model.name!r} accepts at most {model.max_batch}"
            )
        feeds[spec.name] = tensor.array
    if request.outputs is None:
        outputs = [(name, request.binary_output) for name in model.output_names]
    else:
        outputs = []
        for wanted in request.outputs:
            if not model.has_output(wanted.name):
                raise RequestError(
                    f"model {model.name!r} has no output {wanted.name!r}; its outputs are "
                    f"{', '.join(model.output_names)}"
                )
            outputs.append((wanted.name, request.binary_output if wanted.binary is None else wanted.binary))
    return feeds, outputs


def infer(model: ServedModel, body: bytes, header_length: int | None) -> tuple[bytes, dict[str, str]]:
    """Answer one inference request body: the response body and its headers. Raises RequestError."""
    request = decode_infer_request(body, header_length)
    feeds, outputs = check_request(model, request)
    names = [name for name, _ in outputs]
    try:
        results = model.run(feeds, names)
    except InvalidArgument as exc:
        raise RequestError(f"ONNX Runtime refused the inputs: {one_line(exc)}") from None
    except Exception as exc:  # ORT's Fail / RuntimeException: the model failed on these inputs
        raise RequestError(f"inference failed: {one_line(exc)}", status=500) from None
    return encode_infer_response(
        model.name,
        str(model.version),
        request.id,
        [(name, result, binary) for (name, binary), result in zip(outputs, results)],
    )
