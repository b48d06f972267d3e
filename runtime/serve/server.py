"""Running KServe's model server on ONNX Runtime: :func:`serve` (blocking) and :class:`BackgroundServer`.

- :func:`serve` loads every model first (a bad repository fails at once, before a port is
  bound), then runs KServe's model server (REST on ``port``, gRPC on ``grpc_port``) in this
  process until Ctrl-C / SIGTERM.
- The host defaults to ``127.0.0.1``: the server is reachable from this machine only. Another
  host (``0.0.0.0``) is logged as a warning: the server has no authentication.
- :class:`BackgroundServer` runs one server in a child process (``python -m
  onnx_compress.runtime.serve.engine``), on free ports by default, for tests, benchmarks and
  notebooks; leaving the ``with`` block stops it. A child process, because KServe's server
  state is per process (one FastAPI app, one Prometheus registry, signal handlers) and because
  ``tritonclient.grpc`` cannot be imported next to KServe (kserve/kserve#3099).
"""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from onnx_compress.errors import OnnxCompressError, SettingError
from onnx_compress.model_io import PathLike
from onnx_compress.runtime.session import SessionSettings

__all__ = ["ServeSettings", "serve", "BackgroundServer"]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How to serve.

    Attributes:
        host: the address to bind; ``127.0.0.1`` (default) is this machine only.
        port: the HTTP port (REST v1/v2, /metrics).
        grpc_port: the gRPC v2 port; None: no gRPC.
        max_request_bytes: the largest request body (413 above it) and gRPC message accepted.
        concurrency: inference calls run at once per process (worker threads); None = CPU count.
        session: ONNX Runtime session settings (provider ``auto``: CUDA when present; thread
            spinning off, since requests arrive sporadically and the HTTP stack shares the cores).
        name: the model name when serving one ``.onnx`` file (default: its stem).
        log_level: the log level of this package's loggers.
        access_log: log one line per request (uvicorn's access log, KServe's latency line).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = 8001
    max_request_bytes: int = _DEFAULT_MAX_REQUEST_BYTES
    concurrency: int | None = None
    session: SessionSettings = dataclasses.field(default_factory=lambda: SessionSettings(spinning=False))
    name: str | None = None
    log_level: str = "info"
    access_log: bool = True

    def __post_init__(self) -> None:
        for what, port in (("port", self.port), ("grpc_port", self.grpc_port)):
            if port is None and what == "grpc_port":
                continue
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise SettingError(f"{what} must be 1..65535, got {port!r}")
        if self.grpc_port == self.port:
            raise SettingError(f"port and grpc_port must differ, both are {self.port}")
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


def _warn_if_public(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        logger.warning("binding to %s: the server is reachable from other machines and has no authentication", host)


def serve(source: PathLike, settings: ServeSettings | None = None, **overrides: Any) -> None:
    """Serve the model file or model repository ``source`` with KServe until interrupted.

    ``serve("m.onnx", port=8080)`` is ``serve("m.onnx", ServeSettings(port=8080))``.
    See :mod:`onnx_compress.runtime.serve` for the endpoints.
    """
    from onnx_compress.runtime.serve.engine import run

    settings = dataclasses.replace(settings or ServeSettings(), **overrides)
    _warn_if_public(settings.host)
    run(source, settings)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (another process may take it before it is bound)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class BackgroundServer:
    """A server running in a child process::

        with BackgroundServer("repo/") as server:
            client = tritonclient.http.InferenceServerClient(server.url)
            grpc_client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

    ``url`` / ``grpc_url`` are ``host:port`` (the form tritonclient takes); the ports are free
    ones unless given. ``pid`` is the server process (for CPU accounting); its log is ``log()``.
    """

    def __init__(self, source: PathLike, settings: ServeSettings | None = None, **overrides: Any) -> None:
        base = settings or ServeSettings(log_level="warning", access_log=False)
        if "port" not in overrides and settings is None:
            overrides["port"] = free_port(base.host)
        if "grpc_port" not in overrides and settings is None:
            overrides["grpc_port"] = free_port(base.host)
        self.settings = dataclasses.replace(base, **overrides)
        self.source = Path(source).resolve()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def grpc_url(self) -> str:
        if self.settings.grpc_port is None:
            raise OnnxCompressError("this server runs without gRPC (grpc_port=None)")
        return f"{self.settings.host}:{self.settings.grpc_port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise OnnxCompressError("the server is not running")
        return self._process.pid

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _ready(self) -> bool:
        try:
            connection = http.client.HTTPConnection(self.settings.host, self.settings.port, timeout=5)
            connection.request("GET", "/v2/health/ready")
            ready = connection.getresponse().status == 200
            connection.close()
        except OSError:
            return False
        if ready and self.settings.grpc_port is not None:
            try:
                socket.create_connection((self.settings.host, self.settings.grpc_port), timeout=5).close()
            except OSError:
                return False
        return ready

    def start(self, timeout: float = 180.0) -> BackgroundServer:
        payload = json.dumps({"source": str(self.source), "settings": self.settings.to_json()})
        self._process = subprocess.Popen([sys.executable, "-m", "onnx_compress.runtime.serve.engine", payload],
                                         stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._process.poll() is not None:
                raise OnnxCompressError(f"the server did not start (exit {self._process.returncode}):\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise OnnxCompressError(f"the server did not start within {timeout:.0f} s:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        return self

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); its exit status."""
        if self._process is None:
            return None
        process, self._process = self._process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        self._log.close()
