"""A KServe v2 / Open Inference Protocol HTTP server on ONNX Runtime (uvicorn + Starlette).

    onnx-compress serve model.onnx            # or a Triton-style model repository folder
    python -c "from onnx_compress.runtime.serve import serve; serve('repo/', port=8000)"

Clients: any KServe v2 HTTP client, e.g. Triton's official ``tritonclient.http``
(``InferenceServerClient("127.0.0.1:8000")``), with JSON or binary tensor data.

Supported protocol subset
    GET  /v2                                      server metadata (extensions: binary_tensor_data)
    GET  /v2/health/live, /v2/health/ready        liveness, readiness (200, empty body)
    GET  /v2/models/NAME[/versions/V]             model metadata: name, versions, platform,
                                                  inputs/outputs with datatype and shape (-1 = any)
    GET  /v2/models/NAME[/versions/V]/ready       200 when served, 404 when not
    GET  /v2/models/NAME[/versions/V]/config      Triton's model configuration as JSON
    POST /v2/models/NAME[/versions/V]/infer       inference

    Tensor data as JSON ("data", flat or nested, row-major) or with the binary tensor data
    extension (``Inference-Header-Content-Length`` header; ``binary_data_size`` on inputs;
    ``binary_data`` per output or ``binary_data_output`` per request for binary outputs).
    Datatypes BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64. Requests may be gzip or
    deflate encoded; responses are not compressed.

    Not supported: BYTES (string) and BF16 tensors, shared memory (system and CUDA), the
    classification extension, model repository / statistics / trace / logging endpoints,
    sequence batching, server-side dynamic batching, gRPC. A request using one of them gets a
    4xx answer saying so (404 for an endpoint).

Errors are ``{"error": "..."}`` with 400 (malformed request, input not fitting the model),
404 (unknown model, version or endpoint), 405, 413 (body over the limit), 415 (encoding) or 500
(the model failed); the server keeps serving after every one of them.

Safety: binds 127.0.0.1 unless told otherwise; request bodies are limited (64 MiB by default);
inputs are checked against the model (names, datatypes, shapes, max batch) before ONNX Runtime
sees them; ONNX Runtime runs in worker threads, off the event loop.

Layout: :mod:`.protocol` (the wire codec), :mod:`.registry` (models from a file or repository),
:mod:`.inference` (one request against one model), :mod:`.app` (routes, limits, threads),
:mod:`.server` (uvicorn). Only ``.app`` and ``.server`` need starlette / uvicorn
(``pip install "onnx-compress[serve]"``).
"""

from onnx_compress.runtime.serve.server import BackgroundServer, ServeSettings, serve

__all__ = ["BackgroundServer", "ServeSettings", "serve"]
