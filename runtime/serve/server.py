"""Running the application on uvicorn: :func:`serve` (blocking) and :class:`BackgroundServer`.

- :func:`serve` loads every model first (a bad repository fails at once, before a port is
  bound), then runs uvicorn until Ctrl-C / SIGTERM, which shut down gracefully.
- ``workers > 1`` starts that many uvicorn worker processes sharing the socket; each loads its
  own copy of every model (memory x workers). The parent has loaded them once to check them.
- The host defaults to ``127.0.0.1``: the server is reachable from this machine only. Another
  host (``0.0.0.0``) is logged as a warning: the server has no authentication.
- :class:`BackgroundServer` runs one server in a thread of this process, on a free port by
  default, for tests, benchmarks and notebooks; leaving the ``with`` block stops it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from onnx_compress.errors import OnnxCompressError, SettingError
from onnx_compress.model_io import PathLike
from onnx_compress.optional import require
from onnx_compress.runtime.session import SessionSettings

__all__ = ["ServeSettings", "serve", "BackgroundServer", "build_app", "app_from_environment"]

logger = logging.getLogger(__name__)

_ENV = "ONNX_COMPRESS_SERVE"
_DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How to serve.

    Attributes:
        host: the address to bind; ``127.0.0.1`` (default) is this machine only.
        port: the TCP port (0: any free port).
        workers: uvicorn worker processes (each loads every model).
        max_request_bytes: the largest request body accepted (413 above it).
        concurrency: inference calls run at once per process (worker threads); None = CPU count.
        session: ONNX Runtime session settings (provider ``auto``: CUDA when present; thread
            spinning off, since requests arrive sporadically and the HTTP stack shares the cores).
        name: the model name when serving one ``.onnx`` file (default: its stem).
        log_level: uvicorn's log level.
        access_log: log one line per request (uvicorn's access log).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_request_bytes: int = _DEFAULT_MAX_REQUEST_BYTES
    concurrency: int | None = None
    session: SessionSettings = dataclasses.field(default_factory=lambda: SessionSettings(spinning=False))
    name: str | None = None
    log_level: str = "info"
    access_log: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise SettingError(f"port must be 0..65535, got {self.port!r}")
        if self.workers < 1:
            raise SettingError(f"workers must be >= 1, got {self.workers}")
        if self.max_request_bytes < 1:
            raise SettingError(f"max_request_bytes must be >= 1, got {self.max_request_bytes}")
        if self.concurrency is not None and self.concurrency < 1:
            raise SettingError(f"concurrency must be >= 1 or None, got {self.concurrency}")
        if not self.host:
            raise SettingError("host must not be empty (127.0.0.1 serves this machine only)")

    @property
    def threads(self) -> int:
        return self.concurrency or os.cpu_count() or 1

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        values = json.loads(text)
        values["session"] = SessionSettings(**values["session"])
        return cls(**values)


def build_app(source: PathLike, settings: ServeSettings) -> Any:
    """Load the models of ``source`` and return the ASGI application."""
    require("starlette", "onnx-compress serve")
    from onnx_compress.runtime.serve.app import create_app
    from onnx_compress.runtime.serve.registry import load_models

    registry = load_models(source, settings.session, name=settings.name)
    return create_app(registry, max_request_bytes=settings.max_request_bytes, concurrency=settings.threads)


def app_from_environment() -> Any:
    """uvicorn's app factory in worker processes: source and settings come from the environment."""
    config = json.loads(os.environ[_ENV])
    return build_app(config["source"], ServeSettings.from_json(config["settings"]))


def _warn_if_public(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        logger.warning("binding to %s: the server is reachable from other machines and has no authentication", host)


def serve(source: PathLike, settings: ServeSettings | None = None, **overrides: Any) -> None:
    """Serve the model file or model repository ``source`` over HTTP until interrupted.

    ``serve("m.onnx", port=8080)`` is ``serve("m.onnx", ServeSettings(port=8080))``.
    See :mod:`onnx_compress.runtime.serve` for the protocol.
    """
    settings = dataclasses.replace(settings or ServeSettings(), **overrides)
    uvicorn = require("uvicorn", "onnx-compress serve")
    _warn_if_public(settings.host)
    app = build_app(source, settings)  # load and check every model before binding the port
    models = ", ".join(f"{m.name} v{m.version}" for m in app.state.registry)
    logger.info("serving %s on http://%s:%d (%d worker process(es), %d inference thread(s) each, %s)",
                models, settings.host, settings.port, settings.workers, settings.threads,
                next(iter(app.state.registry)).providers[0])
    if settings.workers == 1:
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                access_log=settings.access_log, lifespan="on", server_header=False)
        uvicorn.Server(config).run()
        return
    del app
    os.environ[_ENV] = json.dumps({"source": str(Path(source).resolve()), "settings": settings.to_json()})
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level=settings.log_level, access_log=settings.access_log,
                lifespan="on", server_header=False)


class BackgroundServer:
    """A server running in a background thread of this process::

        with BackgroundServer("repo/") as server:
            client = tritonclient.http.InferenceServerClient(server.url)

    ``url`` is ``host:port`` (the form tritonclient takes); the port is a free one unless given.
    """

    def __init__(self, source: PathLike, settings: ServeSettings | None = None, **overrides: Any) -> None:
        settings = dataclasses.replace(settings or ServeSettings(port=0, log_level="warning"), **overrides)
        if settings.workers != 1:
            raise SettingError("a BackgroundServer runs one worker; use serve() for more")
        uvicorn = require("uvicorn", "onnx-compress serve")
        self.settings = settings
        self.app = build_app(source, settings)
        config = uvicorn.Config(self.app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                access_log=settings.access_log, lifespan="on", server_header=False)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise OnnxCompressError("the server is not running")
        return f"{self.settings.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread = threading.Thread(target=self._server.run, name="onnx-compress-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise OnnxCompressError(f"the server did not start on {self.settings.host}:{self.settings.port} (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise OnnxCompressError(f"the server did not start within {timeout:.0f} s")
            time.sleep(0.01)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None
        self.port = None

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
