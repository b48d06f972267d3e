"""``onnx-compress deploy``: write a model into a Triton Inference Server model repository."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit

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

examples:
  onnx-compress deploy model.onnx --triton models/ --name digits --max-batch 32 --dynamic-batching
  onnx-compress deploy small.onnx --triton models/ --name digits --version 2 --instances 2 --gpu
"""


def _deploy(args: argparse.Namespace) -> int:
    from onnx_compress.runtime.deploy import deploy_triton

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
    emit(args, deployment.as_dict(), human)
    return 0


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "deploy", help="write a model into a Triton model repository",
                         description=_DESCRIPTION, handler=_deploy)
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
    add_json_flag(parser)
