"""The serving commands: deploy (a Triton model repository, KServe manifests) and serve (KServe's model
server with ONNX Runtime)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from onnx_compress.cli.common import SESSION, add_input, arg, command, emit, session_settings
from onnx_compress.setting_cli import given


@command("deploy", """\
write a model into a Triton model repository

Write MODEL into the Triton model repository REPO for Triton's onnxruntime backend (REPO/NAME/config.pbtxt,
REPO/NAME/VERSION/model.onnx), after loading it in ONNX Runtime; an existing version is replaced only
with --overwrite; `onnx-compress serve REPO` serves it locally. --kserve DIR also writes KServe
InferenceService manifests (Triton runtime, or `onnx-compress serve` as a custom predictor + Dockerfile).

example:
  onnx-compress deploy model.onnx --triton models/ --name digits --max-batch 32 --dynamic-batching
""", (
    arg("model", "the ONNX model to deploy"),
    arg("--triton", "the Triton model repository folder (created if missing)", type=Path, required=True,
        metavar="REPO"),
    arg("--name", "the model's name in the repository and in URLs (default: the file's stem)"),
    arg("--version", "the version folder", 1, metavar="N"),
    arg("--max-batch", "Triton's max_batch_size; > 0 needs a dynamic batch axis (default 0: no Triton batching)", 0,
        metavar="N"),
    arg("--instances", "model instances Triton runs in parallel", 1, metavar="N"),
    arg("--gpu", "run the instances on GPUs (KIND_GPU; default KIND_CPU)", False),
    arg("--dynamic-batching", "let Triton merge concurrent requests into batches (needs --max-batch > 0)", False),
    arg("--overwrite", "replace an existing NAME/VERSION/model.onnx (never while a server uses it)", False),
    arg("--kserve", "also write KServe InferenceService manifests and a Dockerfile into DIR", type=Path, metavar="DIR"),
), settings=(("onnx_compress.runtime.deploy.kserve:KServeSettings", None, {"title": "KServe manifests (--kserve)"}),))
def _deploy(args: argparse.Namespace) -> int:
    from onnx_compress.errors import SettingError
    from onnx_compress.runtime.deploy import deploy_triton
    from onnx_compress.runtime.deploy.kserve import KServeSettings, deploy_kserve

    kserve = None
    if args.kserve is not None:
        if args.storage_uri is None:
            raise SettingError("--kserve needs --storage-uri: where the repository will be uploaded "
                               "(s3://..., pvc://...)")
        name = (args.name or args.model.stem).lower().replace("_", "-").replace(".", "-")
        kserve = KServeSettings(name=name, **given(args, KServeSettings))  # checked before writing anything
    deployment = deploy_triton(args.model, args.triton, args.name, version=args.version, max_batch=args.max_batch,
                               instances=args.instances, gpu=args.gpu, dynamic_batching=args.dynamic_batching,
                               overwrite=args.overwrite)
    human, payload = f"{deployment.summary()}\n\n{deployment.config_path}:\n{deployment.config}", deployment.as_dict()
    if kserve is not None:
        manifests = deploy_kserve(args.kserve, kserve)
        human, payload["kserve"] = human + f"\n{manifests.summary()}", manifests.as_dict()
    return emit(args, payload, human)


def _max_request_mb(parser: argparse.ArgumentParser) -> None:
    from onnx_compress.runtime.serve import ServeSettings

    default = ServeSettings.__dataclass_fields__["max_request_bytes"].default / 2**20  # declared once there
    add_input(parser, arg("--max-request-mb", "largest request body / gRPC message accepted, in MiB; larger ones get "
                          f"413 (default {default:g})", default, metavar="MB"))


@command("serve", """\
serve models on KServe's model server (HTTP + gRPC, ONNX Runtime)

Serve an ONNX model, or every model of a Triton model repository, on KServe's model server with ONNX
Runtime: REST v1/v2 (Open Inference Protocol) on --port, gRPC v2 on --grpc-port, /metrics; Triton's and
KServe's clients work with it. Bad requests get a 4xx {"error": "..."} answer. Safety: it binds 127.0.0.1
unless --host says otherwise and has no authentication: bind a public address only behind a trusted proxy.

example:
  onnx-compress serve models/ --port 8080 --grpc-port 8081 --threads 2
""", (
    arg("source", "an .onnx file or a model repository (NAME/config.pbtxt, NAME/1/model.onnx)", type=Path,
        metavar="MODEL_OR_REPO"),
), settings=("onnx_compress.runtime.serve:ServeSettings", _max_request_mb, SESSION), json=False)
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


COMMANDS = [_deploy, _serve]
