"""KServe's model server on ONNX Runtime, driven by Triton's OFFICIAL clients (tritonclient.http
and tritonclient.grpc), not our code.

One server (a child process: KServe and tritonclient.grpc cannot share a process, kserve#3099;
free ports on 127.0.0.1) serves a Triton repository written by deploy_triton: the seed CNN as
"digits" (max_batch_size 8, versions 1 and 2 with version_policy all) and MiniLM (int64 inputs,
batch and sequence axes dynamic). Outputs are compared with ONNX Runtime run in-process with
the same session settings.
"""

from __future__ import annotations

import hashlib
import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from onnx_compress.runtime import Runner, SessionSettings, deploy_triton
from onnx_compress.runtime.serve import BackgroundServer, ServeSettings
from onnx_compress.runtime.serve.server import free_port

SETTINGS = SessionSettings(provider="auto", intra_op_threads=1, spinning=False)  # the server default
LIMIT = 1 << 20  # the server's request body limit in these tests (1 MiB)


@pytest.fixture(scope="module")
def repository(torch_seed_onnx, minilm_onnx, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("triton_repo")
    for version in (1, 2):
        deploy_triton(torch_seed_onnx, repo, "digits", version=version, max_batch=8)
    config = repo / "digits" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    deploy_triton(minilm_onnx, repo, "minilm")
    return repo


@pytest.fixture(scope="module")
def server(repository):
    with BackgroundServer(repository, session=SETTINGS, max_request_bytes=LIMIT, concurrency=4) as running:
        yield running
        assert running.alive(), running.log()[-3000:]


@pytest.fixture()
def client(server):
    with httpclient.InferenceServerClient(server.url) as connection:
        yield connection


@pytest.fixture()
def grpc(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as connection:
        yield connection


@pytest.fixture(scope="module")
def references(torch_seed_onnx, minilm_onnx):
    return {"digits": Runner(torch_seed_onnx, SETTINGS), "minilm": Runner(minilm_onnx, SETTINGS)}


def _input(name: str, array: np.ndarray, datatype: str, binary: bool):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _grpc_input(name: str, array: np.ndarray, datatype: str):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _digits(client, images: np.ndarray, binary: bool = True, **kwargs) -> np.ndarray:
    outputs = [httpclient.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer("digits", [_input("input", images, "FP32", binary)], outputs=outputs, **kwargs)
    return result.as_numpy("output")


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.add(address)
    return found


def test_server_binds_loopback_only_by_default(server):
    assert ServeSettings().host == "127.0.0.1" and server.settings.host == "127.0.0.1"
    for port in (server.settings.port, server.settings.grpc_port):
        found = _listening_addresses(port)  # 127.0.0.1 (or ::ffff:127.0.0.1), not 0.0.0.0 / [::] as KServe binds
        assert found and found <= {"0100007F", "0000000000000000FFFF00000100007F"}, found


def test_health_metadata_and_metrics(client, grpc, server):
    assert client.is_server_live() and client.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("minilm") and grpc.is_model_ready("minilm")
    assert client.is_model_ready("digits", model_version="1")
    assert not client.is_model_ready("no-such-model") and not client.is_model_ready("digits", model_version="9")
    digits = client.get_model_metadata("digits")
    assert digits["name"] == "digits"
    assert digits["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert digits["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    minilm = grpc.get_model_metadata("minilm", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in minilm["inputs"]] == [
        ("input_ids", "INT64", ["-1", "-1"]), ("attention_mask", "INT64", ["-1", "-1"])]
    images = np.zeros((1, 1, 28, 28), dtype=np.float32)
    client.infer("digits", [_input("input", images, "FP32", True)])
    host, port = server.url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    text = response.read().decode()
    assert response.status == 200
    assert 'request_predict_seconds_count{model_name="digits"}' in text, text[:2000]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_digits_outputs_equal_onnx_runtime(client, references, digits_nchw, binary):
    images = digits_nchw.test.take(8).inputs["input"]
    served = _digits(client, images, binary=binary)
    expected = references["digits"].run({"input": images})[0]
    assert served.dtype == np.float32 and served.shape == (8, 10)
    np.testing.assert_array_equal(served, expected)
    # all outputs by default: the client then asks for binary outputs (binary_data_output)
    result = client.infer("digits", [_input("input", images, "FP32", binary)])
    np.testing.assert_array_equal(result.as_numpy("output"), expected)
    # a version by number (REST /versions/V/ route)
    np.testing.assert_array_equal(_digits(client, images, binary=binary, model_version="1"), expected)


def test_grpc_answers_equal_http(client, grpc, references, digits_nchw, minilm_texts):
    images = digits_nchw.test.take(8).inputs["input"]
    for version in ("", "1", "2"):
        over_grpc = grpc.infer("digits", [_grpc_input("input", images, "FP32")], model_version=version,
                               outputs=[grpcclient.InferRequestedOutput("output")]).as_numpy("output")
        np.testing.assert_array_equal(over_grpc, _digits(client, images, model_version=version))
    np.testing.assert_array_equal(over_grpc, references["digits"].run({"input": images})[0])
    feeds = minilm_texts["val"].take(3).inputs
    over_grpc = grpc.infer("minilm", [_grpc_input(k, v, "INT64") for k, v in feeds.items()]).as_numpy("embedding")
    over_http = client.infer("minilm", [_input(k, v, "INT64", True) for k, v in feeds.items()]).as_numpy("embedding")
    np.testing.assert_array_equal(over_grpc, over_http)
    np.testing.assert_array_equal(over_grpc, references["minilm"].run(feeds)[0])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_minilm_outputs_equal_onnx_runtime(client, references, minilm_texts, binary):
    feeds = minilm_texts["val"].take(2).inputs
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.dtype == np.int64 and ids.shape == (2, 64)
    result = client.infer(
        "minilm",
        [_input("input_ids", ids, "INT64", binary), _input("attention_mask", mask, "INT64", binary)],
        outputs=[httpclient.InferRequestedOutput("embedding", binary_data=not binary)],
    )
    expected = references["minilm"].run({"input_ids": ids, "attention_mask": mask})[0]
    np.testing.assert_array_equal(result.as_numpy("embedding"), expected)
    # a shorter sequence: both symbolic axes are free
    short = {"input_ids": ids[:1, :16], "attention_mask": mask[:1, :16]}
    result = client.infer("minilm", [_input(k, v, "INT64", binary) for k, v in short.items()])
    np.testing.assert_array_equal(result.as_numpy("embedding"), references["minilm"].run(short)[0])


def _refused(call, status: str, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == status, info.value.message()
    for fragment in fragments:
        assert fragment in info.value.message(), info.value.message()


def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(client, grpc, references, digits_nchw):
    images = digits_nchw.test.take(2).inputs["input"]
    expected = references["digits"].run({"input": images})[0]
    ids = np.ones((1, 8), dtype=np.int64)
    cases = [
        (lambda: client.infer("nope", [_input("input", images, "FP32", True)]), "404", "nope"),
        (lambda: client.infer("digits", [_input("input", images, "FP32", True)], model_version="9"),
         "404", "no version '9'; loaded: 1, 2"),
        (lambda: client.infer("minilm", [_input("input_ids", ids, "INT64", False)]),
         "400", "missing input 'attention_mask'"),
        (lambda: client.infer("digits", [_input("input", images[:, 0], "FP32", True)]),
         "400", "shape [2, 28, 28] (rank 3)", "[-1, 1, 28, 28]"),
        (lambda: client.infer("digits", [_input("input", images[:, :, :27], "FP32", False)]),
         "400", "axis 2 must be 28"),
        (lambda: client.infer("digits", [_input("input", images.astype(np.float64), "FP64", True)]),
         "400", "datatype FP64", "expects FP32"),
        (lambda: client.infer("digits", [_input("image", images, "FP32", True)]), "400", "no input 'image'"),
        (lambda: client.infer("minilm", [_input("input_ids", ids, "INT64", True),
                                         _input("attention_mask", ids[:, :4], "INT64", True)]),
         "400", "axis 'sequence' is 8 in input 'input_ids' but 4 in input 'attention_mask'"),
        (lambda: client.infer("minilm", [_input("input_ids", ids + 10**6, "INT64", True),
                                         _input("attention_mask", ids, "INT64", True)]),
         "400", "ONNX Runtime refused the inputs"),
        (lambda: _digits(client, digits_nchw.test.take(9).inputs["input"]), "400", "at most 8"),
        (lambda: client.infer("digits", [_input("input", images, "FP32", True)],
                              outputs=[httpclient.InferRequestedOutput("logits")]), "400", "no output 'logits'"),
        (lambda: grpc.infer("nope", [_grpc_input("input", images, "FP32")]), "StatusCode.NOT_FOUND", "nope"),
        (lambda: grpc.infer("digits", [_grpc_input("input", images[:, 0], "FP32")]),
         "StatusCode.INVALID_ARGUMENT", "rank 3"),
        (lambda: grpc.infer("digits", [_grpc_input("input", images, "FP32")], model_version="9"),
         "StatusCode.INVALID_ARGUMENT", "no version '9'"),
        (lambda: grpc.infer("digits", [_grpc_input("input", images.astype(np.float64), "FP64")]),
         "StatusCode.INVALID_ARGUMENT", "expects FP32"),
    ]
    for call, status, *fragments in cases:
        _refused(call, status, *fragments)
        np.testing.assert_array_equal(_digits(client, images), expected)  # still serving


def _raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = server.url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_malformed_and_oversized_bodies(server, client, references, digits_nchw):
    images = digits_nchw.test.take(1).inputs["input"]
    expected = references["digits"].run({"input": images})[0]
    short = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                    "parameters": {"binary_data_size": 3136}}]}).encode()
    for method, path, body, headers, status, fragment in [
        ("POST", "/v2/models/digits/infer", b"{not json", {}, 400, "malformed JSON"),
        ("POST", "/v2/models/digits/infer", b'["a list"]', {}, 400, "JSON object with an 'inputs' list"),
        ("POST", "/v2/models/digits/infer", b'{"inputs": []}', {"Inference-Header-Content-Length": "99"},
         400, "is 99"),
        ("POST", "/v2/models/digits/infer", short + b"\0" * 100, {"Inference-Header-Content-Length": str(len(short))},
         400, "does not fit"),
        ("POST", "/v2/models/digits/infer", b'{"inputs": [{"name": "input"}]}', {}, 400, "malformed inference request"),
        ("POST", "/v2/models/minilm/infer", json.dumps({"inputs": [
            {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 1.5]},
            {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]}]}).encode(), {},
         400, "JSON data of INT64 must be integers"),
        ("POST", "/v2/models/digits/infer", json.dumps({"inputs": [
            {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 700}]}).encode(), {},
         400, "'data' has 700 elements"),
        ("POST", "/v2/models/digits/infer", b"x", {"Content-Encoding": "br"}, 415, "not supported"),
        ("POST", "/v2/models/digits/infer", gzip.compress(b"x" * (LIMIT + 1)), {"Content-Encoding": "gzip"},
         413, "inflated request body"),
        ("POST", "/v2/models/digits/infer", b"x" * (LIMIT + 1), {}, 413, "limit of 1048576 bytes"),
        ("GET", "/v2/models/digits/infer", None, {}, 405, "not allowed"),
        ("GET", "/v2/nothing/here", None, {}, 404, "no such endpoint"),
    ]:
        got_status, got_body = _raw(server, method, path, body, headers)
        assert got_status == status, got_body
        assert fragment in json.loads(got_body)["error"], got_body
        np.testing.assert_array_equal(_digits(client, images), expected)  # still serving
    # a body streamed in chunks, without Content-Length, is cut off at the limit too
    chunks = (b"x" * 65536 for _ in range(LIMIT // 65536 + 2))
    host, port = server.url.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v2/models/digits/infer", body=chunks, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    connection.close()
    # and through the official clients: 400 images are 1.25 MB of binary data
    many = np.repeat(digits_nchw.test.take(8).inputs["input"], 50, axis=0)
    _refused(lambda: _digits(client, many), "413", "larger than this server's limit")
    with grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        _refused(lambda: grpc.infer("digits", [_grpc_input("input", many, "FP32")]),
                 "StatusCode.RESOURCE_EXHAUSTED")
    np.testing.assert_array_equal(_digits(client, images), expected)


def test_gzip_request_bodies(client, references, digits_nchw):
    images = digits_nchw.test.take(3).inputs["input"]
    result = client.infer("digits", [_input("input", images, "FP32", True)], request_compression_algorithm="gzip")
    np.testing.assert_array_equal(result.as_numpy("output"), references["digits"].run({"input": images})[0])


def test_load_16_concurrent_clients_http_and_grpc(server, references, digits_nchw):
    images = digits_nchw.test.inputs["input"]
    expected = references["digits"].run({"input": images})[0]  # per-sample results do not depend on batch
    answers: dict[tuple[int, int], bool] = {}
    failures: list[str] = []

    def one_client(k: int) -> None:
        try:
            if k % 2:
                connection = grpcclient.InferenceServerClient(server.grpc_url)
            else:
                connection = httpclient.InferenceServerClient(server.url, network_timeout=120)
            with connection:
                for j in range(25):
                    index = (k * 25 + j) % len(images)
                    request_id = f"{k}-{j}"
                    if k % 2:
                        result = connection.infer("digits", [_grpc_input("input", images[index:index + 1], "FP32")],
                                                  request_id=request_id)
                    else:
                        outputs = [httpclient.InferRequestedOutput("output", binary_data=j % 3 != 0)]
                        result = connection.infer("digits", [_input("input", images[index:index + 1], "FP32",
                                                                    j % 2 == 0)], outputs=outputs, request_id=request_id)
                        assert result.get_response()["id"] == request_id
                    answers[(k, j)] = bool(np.array_equal(result.as_numpy("output")[0], expected[index]))
        except Exception as exc:  # reported below, with the client that failed
            failures.append(f"client {k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures[:3]
    assert len(answers) == 16 * 25  # none lost
    assert all(answers.values()), [key for key, ok in answers.items() if not ok][:5]


def test_serve_cli_serves_http_and_grpc_and_stops_on_ctrl_c(torch_seed_onnx, references, digits_nchw, tmp_path):
    port, grpc_port = free_port(), free_port()
    script = Path(sys.executable).parent / "onnx-compress"
    log = tmp_path / "serve.log"
    served = hashlib.sha256(Path(torch_seed_onnx).read_bytes()).hexdigest()  # serve leaves its input unchanged
    with open(log, "w") as stderr:
        process = subprocess.Popen([str(script), "serve", str(torch_seed_onnx), "--port", str(port),
                                    "--grpc-port", str(grpc_port), "--threads", "1", "--name", "seed"],
                                   stdout=stderr, stderr=stderr, env={**os.environ})
    try:
        url = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                with httpclient.InferenceServerClient(url) as probe:
                    if probe.is_server_ready():
                        break
            except Exception:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        images = digits_nchw.test.take(4).inputs["input"]
        expected = references["digits"].run({"input": images})[0]
        with httpclient.InferenceServerClient(url) as client:
            assert client.get_model_metadata("seed")["inputs"][0]["shape"] == [-1, 1, 28, 28]
            result = client.infer("seed", [_input("input", images, "FP32", True)])
            np.testing.assert_array_equal(result.as_numpy("output"), expected)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as grpc:
            np.testing.assert_array_equal(grpc.infer("seed", [_grpc_input("input", images, "FP32")]).as_numpy("output"),
                                          expected)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            status = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    text = log.read_text()
    assert status == 0, text
    assert f"serving seed v1 on http://127.0.0.1:{port}, gRPC 127.0.0.1:{grpc_port}" in text and "Traceback" not in text
    assert hashlib.sha256(Path(torch_seed_onnx).read_bytes()).hexdigest() == served


def test_deploy_and_serve_help_explain_every_flag(capsys):
    from onnx_compress.cli.main import main

    for command, flags in [
        ("deploy", ["--triton", "--name", "--version", "--max-batch", "--instances", "--gpu",
                    "--dynamic-batching", "--overwrite", "--json", "--kserve", "--storage-uri", "--image",
                    "--min-replicas", "--max-replicas", "--target-concurrency", "--cpu", "--memory"]),
        ("serve", ["--host", "--port", "--grpc-port", "--concurrency", "--max-request-mb", "--name",
                   "--no-access-log", "--provider", "--threads", "127.0.0.1", "/metrics"]),
    ]:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        for flag in flags:
            assert flag in text, (command, flag)


@pytest.mark.slow
def test_serve_benchmark_runs_and_writes_its_json(torch_seed_onnx, minilm_onnx, tmp_path):
    from benchmarks import bench_serve

    out = tmp_path / "serve.json"
    assert bench_serve.main(["--seed-cnn", str(torch_seed_onnx), "--minilm", str(minilm_onnx), "--clients", "2",
                             "--requests", "5", "--out", str(tmp_path)]) == 0
    results = json.loads(out.read_text())["results"]
    for model in ("seed_cnn", "minilm"):
        modes = results[model]["modes"]
        for mode in ("in-process", "KServe HTTP", "KServe gRPC"):
            assert modes[mode]["requests"] == 10 and modes[mode]["wrong_answers"] == 0
            assert modes[mode]["p99_ms"] >= modes[mode]["p50_ms"] > 0
        assert results[model]["alive_after_bad_requests"] == {"KServe": True}
        assert all(400 <= status < 500 for status in results[model]["bad_requests"]["KServe"].values())
