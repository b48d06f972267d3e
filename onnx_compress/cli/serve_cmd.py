"""``onnx-compress serve``: KServe's model server with ONNX Runtime as the predictor."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_session_flags

__all__ = ["register"]

_DESCRIPTION = """\
Serve an ONNX model, or every model of a Triton model repository (as written by
`onnx-compress deploy`), on KServe's model server (the kserve package) with ONNX Runtime as the
predictor: REST v1/v2 (Open Inference Protocol, JSON or binary tensor data) on --port, gRPC v2
on --grpc-port, Prometheus metrics at /metrics. Triton's official clients (tritonclient.http,
tritonclient.grpc) and any KServe v2 client work with it.

  GET  /v2/health/live   /v2/health/ready   /v2   /v2/models/NAME[/versions/V][/ready]   /metrics
  POST /v2/models/NAME[/versions/V]/infer

A single MODEL.onnx is served as NAME = its file name without .onnx (or --name). From a
repository, each NAME/config.pbtxt gives the name, max_batch_size and version policy.
Requests are checked against the model before ONNX Runtime runs; bad requests get a 4xx
answer {"error": "..."} (gRPC: INVALID_ARGUMENT / NOT_FOUND); the server keeps serving.

Safety: binds 127.0.0.1 (this machine only) unless --host says otherwise; the server has no
authentication, so bind a public address only behind a trusted network or proxy. Request
bodies and gRPC messages above --max-request-mb are refused. Ctrl-C stops it gracefully.
ONNX Runtime's threads do not spin-wait between requests (saves CPU for the server).
To scale past one machine, see `onnx-compress deploy --kserve`.

examples:
  onnx-compress serve model.onnx
  onnx-compress serve models/ --port 8080 --grpc-port 8081 --threads 2
"""


def _serve(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    from onnx_compress.cli.common import session_settings
    from onnx_compress.errors import SettingError
    from onnx_compress.runtime.serve import ServeSettings, serve

    if args.max_request_mb <= 0:
        raise SettingError(f"--max-request-mb must be > 0, got {args.max_request_mb}")
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        grpc_port=None if args.grpc_port == 0 else args.grpc_port,
        max_request_bytes=int(args.max_request_mb * 2**20),
        concurrency=args.concurrency,
        session=dataclasses.replace(session_settings(args), spinning=False),
        name=args.name,
        log_level="debug" if getattr(args, "debug", False) else "info",
        access_log=not args.no_access_log,
    )
    logging.getLogger("onnx_compress.runtime.serve").setLevel(logging.INFO)  # say what is served, where
    serve(args.source, settings)
    return 0


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "serve", help="serve models on KServe's model server (HTTP + gRPC, ONNX Runtime)",
                         description=_DESCRIPTION, handler=_serve)
    parser.add_argument("source", type=Path, metavar="MODEL_OR_REPO",
                        help="an .onnx file, or a model repository folder (NAME/config.pbtxt, NAME/1/model.onnx)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port: REST v1/v2 and /metrics (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, metavar="PORT",
                        help="gRPC v2 port (default 8001; 0: no gRPC)")
    parser.add_argument("--concurrency", type=int, default=None, metavar="N",
                        help="inference calls run at once per process, in worker threads (default: CPU count)")
    parser.add_argument("--max-request-mb", type=float, default=64.0, metavar="MB",
                        help="largest request body / gRPC message accepted, in MiB; larger ones get 413 (default 64)")
    parser.add_argument("--name", default=None,
                        help="the model's name when serving one .onnx file (default: the file's stem)")
    parser.add_argument("--no-access-log", action="store_true",
                        help="do not log one line per request (uvicorn's access log, KServe's latency line)")
    add_session_flags(parser)
