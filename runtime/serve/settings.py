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
from onnx_compress.setting import check_fields, setting

__all__ = ["ServeSettings"]

_DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How to serve (each field's help text is its declaration below)."""

    host: str = setting("127.0.0.1", help="""
        the address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)""")
    port: int = setting(8000, range="[1, 65535]", help="the HTTP port: REST v1/v2 and /metrics")
    grpc_port: int | None = setting(8001, kind="int", range="[0, 65535]", optional=True, metavar="PORT",
                                    help="the gRPC v2 port (default 8001; 0 or None: no gRPC)")
    max_request_bytes: int = setting(_DEFAULT_MAX_REQUEST_BYTES, range=">= 1", cli=False, help="""
        the largest request body (413 above it) and gRPC message accepted""")
    concurrency: int | None = setting(None, kind="int", range=">= 1", help="""
        inference calls run at once per process, in worker threads (default: CPU count)""")
    session: SessionSettings = dataclasses.field(default_factory=lambda: SessionSettings(spinning=False))
    name: str | None = setting(None, kind="str", help="""
        the model's name when serving one .onnx file (default: the file's stem)""")
    log_level: str = setting("info", cli=False, help="the log level of this package's loggers")
    access_log: bool = setting(True, flag="--no-access-log", negate=True, help="""
        log one line per request (uvicorn's access log, KServe's latency line); --no-access-log: do not""")
    #: max_request_bytes in MiB (the command line's unit): when given, it sets max_request_bytes and is
    #: then cleared, so the settings hold the limit once (a later ``replace(max_request_bytes=...)`` holds)
    max_request_mb: float | None = setting(None, kind="float", range="> 0", metavar="MB", help=f"""
        largest request body / gRPC message accepted, in MiB; larger ones get 413 (default
        {_DEFAULT_MAX_REQUEST_BYTES / 2**20:g})""")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.grpc_port == 0:
            object.__setattr__(self, "grpc_port", None)
        if self.max_request_mb is not None:
            object.__setattr__(self, "max_request_bytes", int(self.max_request_mb * 2**20))
            object.__setattr__(self, "max_request_mb", None)
        if self.grpc_port == self.port:
            raise SettingError(f"port and grpc_port must differ, both are {self.port}")
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
