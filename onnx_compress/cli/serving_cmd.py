"""The serving commands: deploy (a Triton model repository, KServe manifests) and serve (KServe's model
server with ONNX Runtime)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from onnx_compress.cli.common import SESSION, arg, command, emit, from_flags
from onnx_compress.setting_cli import given, load

_TRITON = "onnx_compress.runtime.deploy.triton:TritonSettings"
_KSERVE = "onnx_compress.runtime.deploy.kserve:KServeSettings"


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
    arg("--kserve", "also write KServe InferenceService manifests and a Dockerfile into DIR", type=Path, metavar="DIR"),
), settings=(_TRITON, (_KSERVE, None, {"title": "KServe manifests (--kserve)"})))
def _deploy(args: argparse.Namespace) -> int:
    from onnx_compress.runtime.deploy import deploy_triton
    from onnx_compress.runtime.deploy.kserve import deploy_kserve, kserve_settings

    kserve = None if args.kserve is None else kserve_settings(args.model, args.name, **given(args, load(_KSERVE)))
    deployment = deploy_triton(args.model, args.triton, args.name, from_flags(args, _TRITON))
    human, payload = f"{deployment.summary()}\n\n{deployment.config_path}:\n{deployment.config}", deployment.as_dict()
    if kserve is not None:
        manifests = deploy_kserve(args.kserve, kserve)
        human, payload["kserve"] = human + f"\n{manifests.summary()}", manifests.as_dict()
    return emit(args, payload, human)


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
), settings=("onnx_compress.runtime.serve:ServeSettings", SESSION), json=False)
def _serve(args: argparse.Namespace) -> int:
    from onnx_compress.runtime.serve import ServeSettings, serve

    settings = ServeSettings(**given(args, ServeSettings),
                             session=dataclasses.replace(from_flags(args, SESSION), spinning=False),
                             log_level="debug" if getattr(args, "debug", False) else "info")
    logging.getLogger("onnx_compress.runtime.serve").setLevel(logging.INFO)  # say what is served, where
    serve(args.source, settings)
    return 0


COMMANDS = [_deploy, _serve]
