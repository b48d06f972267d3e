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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from onnx_compress.errors import OnnxCompressError
from onnx_compress.model_io import PathLike
from onnx_compress.runtime.serve.settings import ServeSettings

__all__ = ["ServeSettings", "serve", "BackgroundServer"]

logger = logging.getLogger(__name__)

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
