"""The KServe v2 codec on its own (no server, no model): decoding, refusing, encoding."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from onnx_compress.runtime.serve.protocol import (
    BINARY_HEADER,
    RequestError,
    decode_infer_request,
    encode_infer_response,
)


def _body(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def test_json_data_flat_or_nested_in_the_declared_type():
    request = decode_infer_request(_body(
        {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]},
        {"name": "b", "shape": [3], "datatype": "INT8", "data": [-128, 0, 127]},
        {"name": "c", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]},
        id="r1", outputs=[{"name": "y", "parameters": {"binary_data": True}}],
    ))
    a, b, c = request.inputs
    np.testing.assert_array_equal(a.array, np.array([[1, 2.5], [3, 4]], dtype=np.float32))
    assert a.array.dtype == np.float32 and b.array.dtype == np.int8 and c.array.dtype == np.bool_
    assert c.array.tolist() == [[True, False]]
    assert request.id == "r1" and request.outputs[0].name == "y" and request.outputs[0].binary is True
    assert request.binary_output is False


def test_binary_tensor_data_extension():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[7, 8]], dtype=np.int64)
    header = _body(
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}},
        {"name": "ids", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": ids.nbytes}},
        parameters={"binary_data_output": True},
    )
    request = decode_infer_request(header + x.tobytes() + ids.tobytes(), len(header))
    np.testing.assert_array_equal(request.inputs[0].array, x)
    np.testing.assert_array_equal(request.inputs[1].array, ids)
    assert request.binary_output is True and request.outputs is None


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "malformed JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (_body(), None, "at least one tensor"),
        (_body({"shape": [1], "datatype": "FP32", "data": [1]}), None, "needs a 'name'"),
        (_body({"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}), None, "unknown datatype 'FP99'"),
        (_body({"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}), None, "not supported"),
        (_body({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}), None, "non-negative integers"),
        (_body({"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}), None, "has 2 elements, shape [3] needs 3"),
        (_body({"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}), None, "not a regular array"),
        (_body({"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", "b"]}), None, "must be numbers"),
        (_body({"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2.5]}), None, "must be integers"),
        (_body({"name": "x", "shape": [1], "datatype": "UINT8", "data": [256]}), None, "out of the range of UINT8"),
        (_body({"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}), None, "true/false"),
        (_body({"name": "x", "shape": [1], "datatype": "FP32"}), None, "no 'data'"),
        (_body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
               {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}), None, "appears twice"),
        (_body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1],
                "parameters": {"shared_memory_region": "r"}}), None, "shared-memory"),
        (_body({"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}),
         None, "no Inference-Header-Content-Length"),
        (_body({"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}),
         -1, "shape [2] of FP32 needs 8"),
        (b'{"inputs": []}', 999, "request body has 14 bytes"),
        (_body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
               outputs=[{"name": "y", "parameters": {"classification": 3}}]), None, "classification"),
        (_body({"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}, id=5), None, "'id' must be a string"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(body, header_length, message):
    if header_length == -1:  # binary size checks need the header: use the JSON length
        header_length = len(body)
    with pytest.raises(RequestError, match=re.escape(message)) as info:
        decode_infer_request(body, header_length)
    assert info.value.status == 400


def test_binary_data_must_add_up():
    header = _body({"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}})
    with pytest.raises(RequestError, match="binary data ends after 4 bytes"):
        decode_infer_request(header + b"\0" * 4, len(header))
    with pytest.raises(RequestError, match="carries 12 bytes of binary data, but its inputs declare 8"):
        decode_infer_request(header + b"\0" * 12, len(header))


def test_encode_json_and_binary_outputs():
    a = np.array([[1.5, -2.0]], dtype=np.float32)
    b = np.array([3, 4, 5], dtype=np.int64)
    body, headers = encode_infer_response("m", "2", "r", [("a", a, False), ("b", b, True)])
    length = int(headers[BINARY_HEADER])
    document = json.loads(body[:length])
    assert document["model_name"] == "m" and document["model_version"] == "2" and document["id"] == "r"
    first, second = document["outputs"]
    assert first == {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}
    assert second == {"name": "b", "datatype": "INT64", "shape": [3], "parameters": {"binary_data_size": 24}}
    np.testing.assert_array_equal(np.frombuffer(body[length:], dtype="<i8"), b)
    body, headers = encode_infer_response("m", "1", None, [("a", a, False)])
    assert BINARY_HEADER not in headers and "id" not in json.loads(body)
