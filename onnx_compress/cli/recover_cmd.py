"""``onnx-compress recover``: distill a compressed ONNX model back towards its original."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit, protect_inputs
from onnx_compress.setting_cli import add_flags, given

__all__ = ["register"]

_DESCRIPTION = """\
Recovery training: the compressed model (pruned, factored) is trained to reproduce the original
model's outputs on --data (inputs only; 'labels' optional), as the SAME ONNX graph: its Conv,
Gemm, MatMul, bias and norm weights are trained in PyTorch and written back by initializer name
(the graph's structure does not change; the written model is checked in ONNX Runtime against the
trained module). The loss fits each output (KL at a temperature for class scores, cosine for
embeddings, cosine + relative MSE over real tokens for per-token outputs with an attention
mask). After every epoch the model is scored on --val (held-out): top-1 with labels, else
agreement with the original's top-1 for class scores, mean cosine for embeddings; training stops
after --patience epochs without improvement and the best epoch is kept. If no epoch beats the
compressed model, nothing is written (exit status 3). Ctrl-C keeps the best epoch so far.
Needs torch (pip install "onnx-compress[torch]"). Run it before quantization; --qat trains the
int8 model that static quantization will write (its activation ranges travel in the model).
Started by torchrun (WORLD_SIZE > 1), it trains with DistributedDataParallel (gloo on CPU, NCCL
on CUDA), each process on a shard of --data with --batch-size samples per step; rank 0 validates,
writes and reports.

examples:
  onnx-compress prune m.onnx -o pruned.onnx --structured 0.75 --data calib.npz
  onnx-compress recover pruned.onnx --teacher m.onnx --data train.npz --val val.npz -o recovered.onnx --lr 1e-3
  onnx-compress recover pruned.onnx --teacher m.onnx --data train.npz --val val.npz -o qat.onnx --lr 1e-3 --qat
  onnx-compress quantize qat.onnx -o int8.onnx --mode static --data calib.npz
  torchrun --standalone --nproc_per_node 2 $(which onnx-compress) recover pruned.onnx --teacher m.onnx --data train.npz --val val.npz -o recovered.onnx --batch-size 16
"""


def _recover(args: argparse.Namespace) -> int:
    from onnx_compress.model_io import save_model
    from onnx_compress.training.recover import RecoverySettings, recover

    protected = protect_inputs(args, args.teacher)
    settings = RecoverySettings(**given(args, RecoverySettings))
    model, result = recover(args.model, args.teacher, args.data, args.val, settings, progress=not args.no_progress)
    if result.world_size > 1 and not _main_process():
        return 0 if result.improved else 3  # under torchrun only rank 0 writes and reports
    table = result.table()
    payload: dict[str, Any] = {"output": None, **result.as_dict()}
    if not result.improved:
        emit(args, payload, table + f"\n\n{result.summary()}; nothing written")
        return 3
    save_model(model, args.output, protected=protected)
    payload["output"] = str(args.output)
    note = ""
    if result.interrupted:
        note = f"\ninterrupted: wrote the best epoch so far (epoch {result.best_epoch})"
        sys.stderr.write(note.strip() + "\n")
    emit(args, payload, table + f"\n\n{result.summary()}\nwrote {args.output}{note}")
    return 130 if result.interrupted else 0


def _main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _flags(parser: argparse.ArgumentParser) -> None:
    from onnx_compress.training.recover import RecoverySettings

    add_flags(parser, RecoverySettings, "epochs lr batch_size loss temperature label_weight match patience "
              "max_minutes steps_per_epoch trim device seed qat")


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "recover", help="distill a compressed model back towards its original",
                         description=_DESCRIPTION, handler=_recover, settings=_flags)
    parser.add_argument("model", type=Path, help="the compressed ONNX model (never modified)")
    parser.add_argument("--teacher", type=Path, required=True, help="the original ONNX model it was cut from")
    parser.add_argument("--data", type=Path, required=True, help="training .npz (inputs; 'labels' optional)")
    parser.add_argument("--val", type=Path, required=True, help="held-out validation .npz for early stopping")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the recovered ONNX file to write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    add_json_flag(parser)
