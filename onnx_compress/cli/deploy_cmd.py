"""write a model into a Triton model repository

Write MODEL into the Triton model repository REPO for Triton's onnxruntime backend: REPO/NAME/config.pbtxt
(the model's inputs and outputs, max_batch_size, instance_group, dynamic_batching) and
REPO/NAME/VERSION/model.onnx (+ model.onnx.data). With --max-batch N > 0 Triton owns the first axis, which
must be dynamic in the model; with 0 (default) Triton does not batch. The model is loaded in ONNX Runtime
first and never modified; an existing version is replaced only with --overwrite. Serve the repository
locally with `onnx-compress serve REPO`. --kserve DIR also writes KServe InferenceService manifests (with
KServe's Triton runtime, or `onnx-compress serve` as a custom predictor with its Dockerfile) into DIR, then:
kubectl apply -f DIR/...

examples:
  onnx-compress deploy model.onnx --triton models/ --name digits --max-batch 32 --dynamic-batching
  onnx-compress deploy model.onnx --triton models/ --name digits --kserve k8s/ --storage-uri s3://bucket/models
"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_compress.cli.common import Command, arg, emit
from onnx_compress.setting_cli import given


def _deploy(args: argparse.Namespace) -> int:
    from onnx_compress.errors import SettingError
    from onnx_compress.runtime.deploy import deploy_triton
    from onnx_compress.runtime.deploy.kserve import KServeSettings, deploy_kserve

    kserve = None
    if args.kserve is not None:
        if args.storage_uri is None:
            raise SettingError("--kserve needs --storage-uri: where the repository will be uploaded (s3://..., pvc://...)")
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


COMMANDS = [Command("deploy", __doc__, _deploy, (
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
    arg("--kserve", "also write KServe InferenceService manifests and a Dockerfile into DIR", type=Path,
        metavar="DIR"),
    "--json"), settings=(("onnx_compress.runtime.deploy.kserve:KServeSettings", "storage_uri image min_replicas "
                          "max_replicas target_concurrency cpu memory gpus batch_size batch_latency_ms",
                          {"title": "KServe manifests (--kserve)"}),))]
