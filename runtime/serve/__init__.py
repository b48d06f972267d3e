"""Serving on KServe's model server with ONNX Runtime as the predictor.

    onnx-compress serve model.onnx            # or a Triton model repository folder
    python -c "from onnx_compress.runtime.serve import serve; serve('repo/', port=8000)"

KServe (the ``kserve`` package, ``kserve.ModelServer``) owns the protocol: REST v1 and v2
(Open Inference Protocol, JSON or binary tensor data), gRPC v2, health, Prometheus metrics,
request decoding and the ``{"error": ...}`` format. Clients: any v2 client, e.g. Triton's
``tritonclient.http`` (``InferenceServerClient("127.0.0.1:8000")``) and ``tritonclient.grpc``
(``"127.0.0.1:8001"``).

What this package adds (what KServe lacks and users need, kept small):

- :mod:`.registry`: models from one ``.onnx`` file or every model of a Triton repository as
  ``deploy`` writes it (config.pbtxt name = folder, ``max_batch_size``,
  ``default_model_filename``, ``version_policy``), external data checked to stay inside each
  model folder, ONNX Runtime sessions;
- :mod:`.checks`: every request checked against the model (names, datatypes, shapes, shared
  axes, max batch) before ONNX Runtime sees it;
- :mod:`.model`: the ``kserve.Model`` subclass (metadata from the ONNX model, ONNX Runtime in a
  thread pool, versions);
- :mod:`.engine`: KServe's server bound to ``127.0.0.1`` by default, a request size limit,
  gzip/deflate bodies, ``/versions/V/`` routes, the error format for what FastAPI answers itself;
- :mod:`.server`: :func:`serve` (blocking) and :class:`BackgroundServer` (a child process).

Only :mod:`.model` and :mod:`.engine` import kserve (``pip install "onnx-compress[serve]"``).
"""

from onnx_compress.runtime.serve.server import BackgroundServer, ServeSettings, serve

__all__ = ["BackgroundServer", "ServeSettings", "serve"]
