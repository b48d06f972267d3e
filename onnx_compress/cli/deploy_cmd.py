"""``onnx-compress deploy``: write a model into a Triton model repository (and KServe manifests)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit
from onnx_compress.setting_cli import add_flags, given

__all__ = ["register"]

_DESCRIPTION = """\
Write MODEL into the Triton model repository REPO for Triton's onnxruntime backend:

  REPO/NAME/config.pbtxt          platform "onnxruntime_onnx"; inputs and outputs with the model's
                                  names, data types (TYPE_FP32, TYPE_INT64, ...) and dims;
                                  max_batch_size, instance_group, dynamic_batching
  REPO/NAME/VERSION/model.onnx    the model (+ model.onnx.data when it keeps external data)

With --max-batch N > 0, Triton owns the first axis: it must be dynamic in the model (a static
batch axis is refused) and is left out of the config's dims; other dynamic axes are -1. With
--max-batch 0 (default) the dims are the model's full shapes and Triton does not batch.
The model is loaded in ONNX Runtime first; the input model is never modified; an existing
version is not replaced without --overwrite. Serve the repository locally with
`onnx-compress serve REPO`.

With --kserve DIR it also writes Kubernetes manifests for KServe into DIR: NAME-triton.yaml
(an InferenceService serving the repository with KServe's Triton runtime, modelFormat onnx),
NAME-onnxruntime.yaml (one running `onnx-compress serve` as a custom predictor, image built
from the generated DIR/Dockerfile), with --min-replicas/--max-replicas, --target-concurrency,
--cpu/--memory/--gpus and --storage-uri (where you upload REPO). Then: kubectl apply -f DIR/...

examples:
  onnx-compress deploy model.onnx --triton models/ --name digits --max-batch 32 --dynamic-batching
  onnx-compress deploy small.onnx --triton models/ --name digits --version 2 --instances 2 --gpu
  onnx-compress deploy model.onnx --triton models/ --name digits --kserve k8s/ \
      --storage-uri s3://bucket/models --max-replicas 4 --target-concurrency 8 --cpu 2 --memory 1Gi
"""


def _deploy(args: argparse.Namespace) -> int:
    from onnx_compress.errors import SettingError
    from onnx_compress.runtime.deploy import deploy_triton

    kserve = None
    if args.kserve is not None:
        from onnx_compress.runtime.deploy.kserve import KServeSettings

        if args.storage_uri is None:
            raise SettingError("--kserve needs --storage-uri: where the repository will be uploaded (s3://..., pvc://...)")
        name = (args.name or args.model.stem).lower().replace("_", "-").replace(".", "-")
        kserve = KServeSettings(name=name, **given(args, KServeSettings))  # checked before writing anything
    deployment = deploy_triton(
        args.model,
        args.triton,
        args.name,
        version=args.version,
        max_batch=args.max_batch,
        instances=args.instances,
        gpu=args.gpu,
        dynamic_batching=args.dynamic_batching,
        overwrite=args.overwrite,
    )
    human = f"{deployment.summary()}\n\n{deployment.config_path}:\n{deployment.config}"
    payload = deployment.as_dict()
    if kserve is not None:
        from onnx_compress.runtime.deploy.kserve import deploy_kserve

        manifests = deploy_kserve(args.kserve, kserve)
        human += f"\n{manifests.summary()}"
        payload["kserve"] = manifests.as_dict()
    emit(args, payload, human)
    return 0


def _flags(parser: argparse.ArgumentParser) -> None:
    from onnx_compress.runtime.deploy.kserve import KServeSettings

    add_flags(parser.add_argument_group("KServe manifests (--kserve)"), KServeSettings,
              "storage_uri image min_replicas max_replicas target_concurrency cpu memory gpus batch_size "
              "batch_latency_ms")


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "deploy", help="write a model into a Triton model repository",
                         description=_DESCRIPTION, handler=_deploy, settings=_flags)
    parser.add_argument("model", type=Path, help="the ONNX model to deploy")
    parser.add_argument("--triton", type=Path, required=True, metavar="REPO",
                        help="the Triton model repository folder (created if missing)")
    parser.add_argument("--name", default=None,
                        help="the model's name in the repository and in URLs (default: the file's stem)")
    parser.add_argument("--version", type=int, default=1, metavar="N", help="the version folder (default 1)")
    parser.add_argument("--max-batch", type=int, default=0, metavar="N",
                        help="Triton's max_batch_size; > 0 needs a dynamic batch axis (default 0: no Triton batching)")
    parser.add_argument("--instances", type=int, default=1, metavar="N",
                        help="model instances Triton runs in parallel (default 1)")
    parser.add_argument("--gpu", action="store_true", help="run the instances on GPUs (KIND_GPU; default KIND_CPU)")
    parser.add_argument("--dynamic-batching", action="store_true",
                        help="let Triton merge concurrent requests into batches (needs --max-batch > 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing NAME/VERSION/model.onnx (never while a server uses it)")
    parser.add_argument("--kserve", type=Path, default=None, metavar="DIR",
                        help="also write KServe InferenceService manifests and a Dockerfile into DIR")
    add_json_flag(parser)
