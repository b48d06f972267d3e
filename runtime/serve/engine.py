"""KServe's model server, set up for onnx-compress: what it lacks that users need, and no more.

KServe (``kserve.ModelServer``) serves REST v1/v2 (FastAPI on uvicorn) and gRPC v2 (grpc.aio)
from one process, with its own request decoding, error format (``{"error": ...}``), health
endpoints and Prometheus ``/metrics``. This module adds, around it:

- binding to ``127.0.0.1`` by default (KServe binds every interface: ``0.0.0.0`` / ``[::]``);
- a request body limit (413) for REST, also for chunked and gzip/deflate bodies (inflated
  with the same limit), and gRPC's message limit set to the same size; an unknown
  ``Content-Encoding`` is answered 415 (KServe would read the compressed bytes as JSON);
- the Triton repository's versions: ``/v2/models/NAME/versions/V/...`` (which KServe answers
  501) is rewritten to ``/v2/models/NAME/...`` with the version in a header, after checking
  that V is loaded (404 otherwise);
- the protocol's error format for what FastAPI answers by itself (422 validation errors, 404
  unknown routes, 405 wrong methods) and for decoding errors KServe lets through as 500
  (a binary input whose size does not match its shape, a body without ``inputs``): 400.

Run it with :func:`run` (blocking, in this process) or ``python -m
onnx_compress.runtime.serve.engine SETTINGS_JSON`` (what :class:`~.server.BackgroundServer`
starts). KServe and ``tritonclient.grpc`` cannot be imported into one process (both register the
v2 gRPC messages in protobuf's default pool, kserve/kserve#3099), so clients using
``tritonclient.grpc`` must run in another process than the server.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import sys
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from onnx_compress.errors import SettingError
from onnx_compress.model_io import PathLike
from onnx_compress.optional import require
from onnx_compress.runtime.serve.checks import VERSION_HEADER

__all__ = ["run"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_BINARY_HEADER = b"inference-header-content-length"
_VERSION_HEADER = VERSION_HEADER.encode()
_VERSIONED = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)(/(?:infer|ready))?/?$")


def _import_kserve() -> None:
    """Import kserve with a clean ``sys.argv``: ``kserve.model_server`` parses it at import time."""
    if "kserve.model_server" in sys.modules:
        return
    require("kserve", "onnx-compress serve")
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve.model_server  # noqa: F401
    finally:
        sys.argv = saved


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise _Refused(415, f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _Refused(400, f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise _Refused(413, f"inflated request body is larger than this server's limit of {limit} bytes")
    return data


class RequestGuard:
    """ASGI middleware in front of KServe's REST app: body limit, encodings, versions (see module doc)."""

    def __init__(self, app: Any, *, max_request_bytes: int, versions: dict[str, list[str]]) -> None:
        self.app = app
        self.limit = max_request_bytes
        self.versions = versions

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _Refused(400, f"Content-Length must be a number of bytes, got {declared.decode(errors='replace')!r}")
            if int(declared) > self.limit:
                raise _Refused(413, f"request body of {int(declared)} bytes is larger than this server's limit "
                                    f"of {self.limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, "the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                raise _Refused(413, f"request body is larger than this server's limit of {self.limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
        return _inflate(b"".join(chunks), encoding, self.limit)

    def _route(self, scope: Scope) -> tuple[Scope, bytes | None]:
        """The scope with a versioned model path rewritten, and the version asked for (or None)."""
        match = _VERSIONED.match(scope["path"])
        if match is None:
            return scope, None
        name, version, rest = match.group(1), match.group(2), match.group(3) or ""
        loaded = self.versions.get(name)
        if loaded is not None and version not in loaded:
            raise _Refused(404, f"model {name!r} has no version {version!r}; loaded: {', '.join(loaded)}")
        path = f"/v2/models/{name}{rest}"
        return {**scope, "path": path, "raw_path": path.encode()}, version.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            scope, version = self._route(scope)
            headers = [(k, v) for k, v in scope["headers"] if k != _VERSION_HEADER]  # only a route sets it
            if version is not None:
                headers.append((_VERSION_HEADER, version))
            if scope["method"] != "POST":
                await self.app({**scope, "headers": headers}, receive, send)
                return
            body = await self._body(scope, receive)
        except _Refused as refused:
            await _answer(send, refused.status, refused.message)
            return
        # the body KServe reads is the inflated one
        headers = [(k, v) for k, v in headers if k not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", str(len(body)).encode()))
        if scope["path"].endswith("/infer") and not any(k == _BINARY_HEADER for k, _ in headers):
            # a JSON-only body: KServe decodes raw bodies only with this header (its JSON part = all of it)
            headers.append((_BINARY_HEADER, str(len(body)).encode()))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


def _error_handlers() -> dict[Any, Callable[..., Awaitable[Any]]]:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def validation(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = first.get("msg", "invalid request")
        return JSONResponse({"error": f"malformed inference request: {message}" + (f" at {where}" if where else "")},
                            status_code=400)

    async def http_error(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, HTTPException)
        messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                    405: f"method {request.method} is not allowed on {request.url.path}"}
        return JSONResponse({"error": messages.get(exc.status_code, str(exc.detail))}, status_code=exc.status_code)

    return {RequestValidationError: validation, HTTPException: http_error}


def _server_classes() -> tuple[type, type, type]:
    """KServe's REST server, gRPC server and data plane, each adapted (see the module doc)."""
    _import_kserve()
    import orjson
    from grpc import aio
    from kserve import InferInput, InferRequest
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import RequestedOutput
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.rest.server import RESTServer

    class CheckedDataPlane(DataPlane):
        def decode_inference_request(self, body: Any, headers: Any, model_name: str) -> Any:
            """KServe's REST v2 decoding, except that binary tensor data stays bytes.

            KServe turns each binary input into a Python list of numbers (one ``.item()`` per
            element: ~1 ms of server CPU for a 28x28 image) and back into an array; here the
            bytes go to the model as they came (:mod:`.model` checks their size against the shape).
            """
            if not isinstance(body, bytes):
                return super().decode_inference_request(body, headers, model_name)
            json_length = int(headers.get(_BINARY_HEADER.decode(), len(body)))
            if not 0 <= json_length <= len(body):
                raise InvalidInput(f"{_BINARY_HEADER.decode()} is {json_length}, the body has {len(body)} bytes")
            try:
                document = orjson.loads(body[:json_length])
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"malformed JSON in the request body: {exc}") from None
            if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
                raise InvalidInput("the request body must be a JSON object with an 'inputs' list")
            offset = json_length
            inputs = []
            for entry in document["inputs"]:
                params = entry.get("parameters") or {}
                tensor = InferInput(name=entry["name"], shape=entry["shape"], datatype=entry["datatype"],
                                    parameters=params)
                if "data" in entry:
                    tensor.data = entry["data"]
                elif "binary_data_size" in params:
                    size = params["binary_data_size"]
                    if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(body):
                        raise InvalidInput(f"input {entry['name']!r}: binary_data_size {size!r} does not fit "
                                           f"the {len(body) - offset} bytes left in the body")
                    tensor._raw_data = body[offset:offset + size]
                    offset += size
                else:
                    raise InvalidInput(f"input {entry['name']!r} has no 'data' and no binary_data_size")
                inputs.append(tensor)
            outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters"))
                       for o in document.get("outputs") or []]
            return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=document.get("id"),
                                parameters=document.get("parameters"), request_outputs=outputs or None)

        def decode(self, body: Any, headers: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().decode(body, headers, *args, **kwargs)
            except InvalidInput:
                raise
            except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
                what = f"missing field {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
                raise InvalidInput(f"malformed inference request: {what}") from None

    class GuardedRESTServer(RESTServer):
        def __init__(self, *args: Any, host: str, access_log: bool, max_request_bytes: int,
                     versions: dict[str, list[str]], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = host
            self.config.access_log = access_log
            self.config.server_header = False
            self._guard = {"max_request_bytes": max_request_bytes, "versions": versions}

        def _add_middlewares(self, app: Any) -> None:
            if self.config.access_log:  # KServe's timing middleware only logs (2 getrusage calls a request)
                super()._add_middlewares(app)

        def create_application(self) -> None:
            super().create_application()
            from uvicorn.importer import import_from_string

            app = import_from_string("kserve.model_server:app")
            for kind, handler in _error_handlers().items():
                app.add_exception_handler(kind, handler)
            app.add_middleware(RequestGuard, **self._guard)

    class BoundGRPCServer(GRPCServer):
        def __init__(self, *args: Any, host: str, max_message_bytes: int, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._host = host
            self._limit = max_message_bytes

        async def start(self, max_workers: int) -> None:  # KServe's start, bound to self._host
            servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
            self._server = aio.server(
                concurrent.futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(ExceptionToStatusInterceptor(),),
                options=[("grpc.max_send_message_length", self._limit),
                         ("grpc.max_receive_message_length", self._limit)],
            )
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
            address = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
            if self._server.add_insecure_port(address) == 0:
                raise OSError(f"cannot bind gRPC to {address}")
            await self._server.start()
            await self._server.wait_for_termination()

    return GuardedRESTServer, BoundGRPCServer, CheckedDataPlane


def run(source: PathLike, settings: Any) -> None:
    """Load every model of ``source`` and serve it with KServe until SIGINT/SIGTERM.

    ``settings`` is a :class:`~onnx_compress.runtime.serve.settings.ServeSettings`.
    """
    import asyncio

    from onnx_compress.runtime.serve.registry import load_models

    registry = load_models(source, settings.session, name=settings.name)  # fails before a port is bound
    rest_cls, grpc_cls, dataplane_cls = _server_classes()
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING

    from onnx_compress.runtime.serve.model import OnnxRuntimeModel

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="onnxruntime")
    models = [OnnxRuntimeModel([registry.find(name, str(v)) for v in registry.versions(name)], executor)
              for name in registry.names]
    versions = {name: [str(v) for v in registry.versions(name)] for name in registry.names}

    class Server(ModelServer):
        def start(self, served: list[Any]) -> None:  # ModelServer.start, one process, our servers
            self._register_and_check_atleast_one_model_is_ready(served)
            self.dataplane = dataplane_cls(model_registry=self.registered_models)
            self._rest_server = rest_cls(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
                grace_period=self.grace_period, timeout_keep_alive=self.timeout_keep_alive,
                host=settings.host, access_log=settings.access_log,
                max_request_bytes=settings.max_request_bytes, versions=versions)
            self.servers.append(self._rest_server.start())
            if settings.grpc_port is not None:
                self._grpc_server = grpc_cls(
                    self.grpc_port, self.dataplane, self.model_repository_extension, kwargs={},
                    grace_period=self.grace_period, host=settings.host,
                    max_message_bytes=settings.max_request_bytes)
                self.servers.append(self._grpc_server.start(self.max_threads))
            self.register_signal_handler()
            asyncio.run(self._serve())

    server = Server(http_port=settings.port, grpc_port=settings.grpc_port or 0, workers=1,
                    max_threads=max(4, settings.threads), enable_grpc=settings.grpc_port is not None,
                    enable_latency_logging=settings.access_log, grace_period=5)
    logging.getLogger("kserve").setLevel(logging.INFO if settings.access_log else logging.WARNING)
    if not settings.access_log:  # uvicorn logs a request whenever its access logger has a handler somewhere
        access = logging.getLogger("uvicorn.access")
        access.handlers, access.propagate = [], False
    grpc = f", gRPC {settings.host}:{settings.grpc_port}" if settings.grpc_port is not None else ""
    names = ", ".join(f"{m.name} v{m.version}" for m in registry)
    logger.info("serving %s on http://%s:%d%s (KServe, %d inference thread(s), %s)", names, settings.host,
                settings.port, grpc, settings.threads, next(iter(registry)).providers[0])
    server.start(models)


def main(argv: list[str]) -> int:
    """``python -m onnx_compress.runtime.serve.engine '{"source": ..., "settings": ...}'``."""
    from onnx_compress.runtime.serve.settings import ServeSettings

    if len(argv) != 1:
        raise SettingError("usage: python -m onnx_compress.runtime.serve.engine SETTINGS_JSON")
    config = json.loads(argv[0])
    settings = ServeSettings.from_json(config["settings"])
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(config["source"], settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
