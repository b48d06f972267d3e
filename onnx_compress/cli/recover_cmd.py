"""distill a compressed model back towards its original

Recovery training: the compressed model (pruned, factored) is trained in PyTorch to reproduce the
original's outputs on --data as the SAME ONNX graph (its Conv, Gemm, MatMul, bias and norm weights are
written back by initializer name and checked in ONNX Runtime). The loss fits each output (--loss). After
every epoch it is scored on --val (held-out); it stops after --patience epochs without gain and keeps the
best epoch. If none beats the compressed model, nothing is written (exit status 3); Ctrl-C writes the best
epoch so far (exit status 130). Needs torch (pip install "onnx-compress[torch]"). Run it before
quantization (--qat: for static int8). Under torchrun (WORLD_SIZE > 1) it trains with
DistributedDataParallel, each process on a shard of --data; rank 0 validates, writes and reports.

examples:
  onnx-compress recover pruned.onnx --teacher m.onnx --data train.npz --val val.npz -o recovered.onnx --lr 1e-3
  torchrun --standalone --nproc_per_node 2 $(which onnx-compress) recover pruned.onnx --teacher m.onnx \\
      --data train.npz --val val.npz -o recovered.onnx --batch-size 16
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from onnx_compress.cli.common import Command, arg, emit, protect_inputs
from onnx_compress.setting_cli import given


def _recover(args: argparse.Namespace) -> int:
    from onnx_compress.model_io import save_model
    from onnx_compress.training.recover import RecoverySettings, recover

    protected = protect_inputs(args, args.teacher)
    settings = RecoverySettings(**given(args, RecoverySettings))
    model, result = recover(args.model, args.teacher, args.data, args.val, settings, progress=not args.no_progress)
    if result.world_size > 1 and os.environ.get("RANK", "0") != "0":
        return 0 if result.improved else 3  # under torchrun only rank 0 writes and reports
    if not result.improved:
        return emit(args, {"output": None, **result.as_dict()}, f"{result.table()}\n\n{result.summary()}; nothing written", 3)
    save_model(model, args.output, protected=protected)
    note = f"\ninterrupted: wrote the best epoch so far (epoch {result.best_epoch})" if result.interrupted else ""
    sys.stderr.write(note.lstrip("\n") + "\n" if note else "")
    return emit(args, {"output": str(args.output), **result.as_dict()},
                f"{result.table()}\n\n{result.summary()}\nwrote {args.output}{note}", 130 if result.interrupted else 0)


COMMANDS = [Command("recover", __doc__, _recover, (
    arg("model", "the compressed ONNX model (never modified)"),
    arg("--teacher", "the original ONNX model it was cut from", type=Path, required=True),
    arg("--data", "training .npz (inputs; 'labels' optional)", required=True),
    arg("--val", "held-out validation .npz for early stopping", required=True),
    arg("-o", "the recovered ONNX file to write"),
    "--no-progress", "--json"), settings=(("onnx_compress.training.recover:RecoverySettings", "epochs lr batch_size "
                                           "loss temperature label_weight match patience max_minutes steps_per_epoch "
                                           "trim device seed qat"),))]
