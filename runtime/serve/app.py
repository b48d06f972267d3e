"""The Starlette application: KServe v2 routes over a :class:`ModelRegistry`.

Routes (``{version}`` routes address one version; without it, the highest loaded version):

    GET  /v2                                        server metadata
    GET  /v2/health/live, /v2/health/ready          200 while serving (empty body)
    GET  /v2/models/{name}[/versions/{v}]           model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready     200 when loaded, 404 when unknown
    GET  /v2/models/{name}[/versions/{v}]/config    Triton's model config as JSON (Triton extension)
    POST /v2/models/{name}[/versions/{v}]/infer     inference (JSON or binary tensor data)

Robustness:

- The request body is read with a hard limit (``max_request_bytes``): a larger
  ``Content-Length``, or a stream that grows past it, is answered 413 without reading further.
  ``Content-Encoding: gzip`` / ``deflate`` bodies are inflated with the same limit on the
  inflated size; other encodings are answered 415.
- Decoding, ONNX Runtime and encoding run in worker threads (``concurrency`` at a time), never
  on the event loop, so other connections are served while a model runs.
- Every error is answered in the protocol's format, ``{"error": "..."}``, with a 4xx status for
  a bad request (400 malformed or not fitting the model, 404 unknown model or route, 405 wrong
  method, 413 too large, 415 unknown encoding) and 500 for a failure of the server or model; the
  server keeps serving either way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from onnx_compress import __version__
from onnx_compress.errors import SettingError, one_line
from onnx_compress.runtime.serve.inference import infer
from onnx_compress.runtime.serve.protocol import BINARY_HEADER, RequestError, error_body
from onnx_compress.runtime.serve.registry import ModelRegistry, ServedModel

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "create_app"]

logger = logging.getLogger(__name__)

#: default limit of a request body (64 MiB)
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
_SERVER_NAME = "onnx-compress"

Handler = Callable[[Request], Awaitable[Response]]


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse(error_body(message), status_code=status)


def _answers_errors(handler: Handler) -> Handler:
    """Turn RequestError into its status and anything unexpected into a 500, both as {"error"}."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            return _error(exc.message, exc.status)
        except Exception as exc:  # a bug or a resource failure: log it, answer, keep serving
            logger.exception("internal error answering %s %s", request.method, request.url.path)
            return _error(f"internal server error: {type(exc).__name__}: {one_line(exc)}", 500)

    return wrapped


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(f"Content-Length must be a number of bytes, got {declared!r}")
        if int(declared) > limit:
            raise RequestError(
                f"request body of {int(declared)} bytes is larger than this server's limit of {limit} bytes",
                413,
            )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(f"request body is larger than this server's limit of {limit} bytes", 413)
        chunks.append(chunk)
    return _decode_content(b"".join(chunks), request.headers.get("content-encoding"), limit)


def _decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)", 415)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise RequestError(f"inflated request body is larger than this server's limit of {limit} bytes", 413)
    return data


def _header_length(request: Request) -> int | None:
    value = request.headers.get(BINARY_HEADER)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise RequestError(f"{BINARY_HEADER} must be a number of bytes, got {value!r}")
    return int(value)


class _Server:
    """The route handlers, bound to one registry and its limits."""

    def __init__(self, registry: ModelRegistry, max_request_bytes: int, concurrency: int) -> None:
        self.registry = registry
        self.max_request_bytes = max_request_bytes
        self.concurrency = concurrency
        self.limiter: anyio.CapacityLimiter | None = None  # created on the server's event loop

    def model(self, request: Request) -> ServedModel:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        model = self.registry.find(name, version)
        if model is None:
            if name not in self.registry.names:
                raise RequestError(
                    f"unknown model {name!r}; this server serves {', '.join(self.registry.names)}", 404
                )
            loaded = ", ".join(map(str, self.registry.versions(name)))
            raise RequestError(f"model {name!r} has no version {version!r}; loaded: {loaded}", 404)
        return model

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": _SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]})

    async def healthy(self, request: Request) -> Response:
        return Response(status_code=200)

    async def model_metadata(self, request: Request) -> Response:
        model = self.model(request)
        return JSONResponse(model.metadata(self.registry.versions(model.name)))

    async def model_ready(self, request: Request) -> Response:
        self.model(request)
        return Response(status_code=200)

    async def model_config(self, request: Request) -> Response:
        model = self.model(request)
        config = model.config_json()
        if config is None:
            raise RequestError(f"model {model.name!r} has no Triton configuration", 404)
        return JSONResponse(config)

    async def model_infer(self, request: Request) -> Response:
        model = self.model(request)
        body = await _read_body(request, self.max_request_bytes)
        header_length = _header_length(request)
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(self.concurrency)
        content, headers = await anyio.to_thread.run_sync(infer, model, body, header_length, limiter=self.limiter)
        return Response(content, status_code=200, headers=headers)


def _routes(server: _Server) -> list[Route]:
    def route(path: str, handler: Handler, method: str = "GET") -> Route:
        return Route(path, _answers_errors(handler), methods=[method])

    model_routes: list[Route] = []
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        model_routes += [
            route(prefix, server.model_metadata),
            route(prefix + "/ready", server.model_ready),
            route(prefix + "/config", server.model_config),
            route(prefix + "/infer", server.model_infer, "POST"),
        ]
    return [
        route("/v2", server.server_metadata),
        route("/v2/health/live", server.healthy),
        route("/v2/health/ready", server.healthy),
        *model_routes,
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                405: f"method {request.method} is not allowed on {request.url.path}"}
    return _error(messages.get(exc.status_code, str(exc.detail)), exc.status_code)


def create_app(
    registry: ModelRegistry,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    concurrency: int = 4,
) -> Starlette:
    """The ASGI application serving ``registry`` (see the module docstring)."""
    if max_request_bytes < 1:
        raise SettingError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
    if concurrency < 1:
        raise SettingError(f"concurrency must be >= 1, got {concurrency}")
    server = _Server(registry, max_request_bytes, concurrency)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.limiter = anyio.CapacityLimiter(concurrency)
        names = ", ".join(f"{m.name} v{m.version} ({m.providers[0]})" for m in registry)
        logger.info("serving %s", names)
        yield

    app = Starlette(routes=_routes(server), exception_handlers={HTTPException: _http_error}, lifespan=lifespan)
    app.state.registry = registry
    return app
