"""How a server is run: :class:`ServeSettings` (validated on construction, JSON for the child process).

Its own module so that the server process (``engine.py``) and the launcher (``server.py``) both
read it without importing each other.
"""

from __future__ import annotations

import dataclasses
import json
import os

from onnx_compress.errors import SettingError
from onnx_compress.runtime.session import SessionSettings

__all__ = ["ServeSettings"]

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
