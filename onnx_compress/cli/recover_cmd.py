"""``onnx-compress recover``: distill a compressed ONNX model back towards its original."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit

__all__ = ["register", "DEVICES", "LOSS_KINDS"]

# the choices of onnx_compress.training.recover, kept here so that --help does not import the
# training room (tests/training/test_cli_recover.py checks that they agree)
DEVICES = ("auto", "cpu", "cuda")
LOSS_KINDS = ("auto", "kl", "cosine", "token", "mse")

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
Needs torch (pip install "onnx-compress[torch]"). Run it before quantization.

examples:
  onnx-compress prune m.onnx -o pruned.onnx --structured 0.75 --data calib.npz
  onnx-compress recover pruned.onnx --teacher m.onnx --data train.npz --val val.npz -o recovered.onnx --lr 1e-3
"""


def _recover(args: argparse.Namespace) -> int:
    from onnx_compress.model_io import check_output_path, model_files, save_model
    from onnx_compress.table import format_table
    from onnx_compress.training.recover import RecoverySettings, recover

    protected = [*model_files(args.model), *model_files(args.teacher)]
    check_output_path(args.output, protected)
    settings = RecoverySettings(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, loss=args.loss, temperature=args.temperature,
        label_weight=args.label_weight, match=tuple(args.match or ()), patience=args.patience,
        device=args.device, seed=args.seed, max_minutes=args.max_minutes,
        steps_per_epoch=args.steps_per_epoch, trim=not args.no_trim,
    )
    model, result = recover(args.model, args.teacher, args.data, args.val, settings, progress=not args.no_progress)
    rows = [[r.epoch, "-" if r.train_loss is None else f"{r.train_loss:.5g}", f"{r.val_loss:.5g}",
             f"{r.metric:.5g}", "-" if r.metric_min is None else f"{r.metric_min:.4g}", f"{r.seconds:.1f}"]
            for r in result.history]
    table = format_table(["epoch", "train loss", "val loss", f"val {result.metric_name}", "min", "s"], rows)
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


def register(subparsers: Any) -> None:
    parser = add_command(subparsers, "recover", help="distill a compressed model back towards its original",
                         description=_DESCRIPTION, handler=_recover)
    parser.add_argument("model", type=Path, help="the compressed ONNX model (never modified)")
    parser.add_argument("--teacher", type=Path, required=True, help="the original ONNX model it was cut from")
    parser.add_argument("--data", type=Path, required=True, help="training .npz (inputs; 'labels' optional)")
    parser.add_argument("--val", type=Path, required=True, help="held-out validation .npz for early stopping")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the recovered ONNX file to write")
    parser.add_argument("--epochs", type=int, default=10, help="most passes over the training data (default 10)")
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="AdamW peak learning rate (default 1e-4; small CNNs take 1e-3)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    parser.add_argument("--loss", choices=LOSS_KINDS, default="auto", help="loss for every output (default auto)")
    parser.add_argument("--temperature", type=float, default=2.0, help="KL temperature for class scores (default 2)")
    parser.add_argument("--label-weight", type=float, default=0.5,
                        help="weight of the hard-label loss when the data has labels, in [0, 1] (default 0.5)")
    parser.add_argument("--match", nargs="*", metavar="VALUE",
                        help="intermediate values both graphs have to match too ('auto': every LayerNorm output; "
                             "'layers': every transformer encoder layer's output)")
    parser.add_argument("--patience", type=int, default=3, help="epochs without improvement before stopping (3)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes (the last, partial epoch is evaluated)")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="validate (and early-stop) every N steps instead of once per pass over the data")
    parser.add_argument("--no-trim", action="store_true",
                        help="keep every batch at the data's full sequence length (default: pad to the batch's "
                             "longest real sequence when the graph allows)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    add_json_flag(parser)
