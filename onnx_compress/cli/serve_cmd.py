"""serve models on KServe's model server (HTTP + gRPC, ONNX Runtime)

Serve an ONNX model, or every model of a Triton model repository (as `onnx-compress deploy` writes it), on
KServe's model server with ONNX Runtime as the predictor: REST v1/v2 (Open Inference Protocol) on --port,
gRPC v2 on --grpc-port, Prometheus metrics at /metrics; Triton's clients and any KServe v2 client work.

  GET  /v2/health/live   /v2/health/ready   /v2   /v2/models/NAME[/versions/V][/ready]   /metrics
  POST /v2/models/NAME[/versions/V]/infer

A MODEL.onnx is served as its file name without .onnx (or --name); in a repository each NAME/config.pbtxt
gives the name, max_batch_size and versions. A bad request gets a 4xx {"error": "..."} answer (gRPC:
INVALID_ARGUMENT / NOT_FOUND). Safety: binds 127.0.0.1 unless --host says otherwise and has no
authentication (bind a public address only behind a trusted network or proxy). Ctrl-C stops it gracefully.

examples:
  onnx-compress serve model.onnx
  onnx-compress serve models/ --port 8080 --grpc-port 8081 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from onnx_compress.cli.common import SESSION, Command, add_input, arg, session_settings
from onnx_compress.setting_cli import given


def _serve(args: argparse.Namespace) -> int:
    from onnx_compress.errors import SettingError
    from onnx_compress.runtime.serve import ServeSettings, serve

    if args.max_request_mb <= 0:
        raise SettingError(f"--max-request-mb must be > 0, got {args.max_request_mb}")
    no_grpc, args.grpc_port = args.grpc_port == 0, None if args.grpc_port == 0 else args.grpc_port
    settings = ServeSettings(**given(args, ServeSettings), **({"grpc_port": None} if no_grpc else {}),
                             max_request_bytes=int(args.max_request_mb * 2**20),
                             session=dataclasses.replace(session_settings(args), spinning=False),
                             log_level="debug" if getattr(args, "debug", False) else "info")
    logging.getLogger("onnx_compress.runtime.serve").setLevel(logging.INFO)  # say what is served, where
    serve(args.source, settings)
    return 0


def _max_request_mb(parser: argparse.ArgumentParser) -> None:
    from onnx_compress.runtime.serve import ServeSettings

    default = ServeSettings.__dataclass_fields__["max_request_bytes"].default / 2**20  # declared once there
    add_input(parser, arg("--max-request-mb", "largest request body / gRPC message accepted, in MiB; larger ones get "
                          f"413 (default {default:g})", default, metavar="MB"))


COMMANDS = [Command("serve", __doc__, _serve, (
    arg("source", "an .onnx file, or a model repository folder (NAME/config.pbtxt, NAME/1/model.onnx)", type=Path,
        metavar="MODEL_OR_REPO"),), settings=(("onnx_compress.runtime.serve:ServeSettings",
                                               "host port grpc_port concurrency name access_log"),
                                              _max_request_mb, SESSION))]
