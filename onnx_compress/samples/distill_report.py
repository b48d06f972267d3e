"""What the two distillation samples share (``samples/distill_torch.py``, ``samples/distill_keras.py``):
their flags and their report (per-seed and mean test top-1 and agreement, and which student won)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from onnx_compress.table import format_table, human_count

__all__ = ["parser", "verdict", "report"]


def parser(description: str, epochs: int, out: str) -> argparse.ArgumentParser:
    """The samples' flags; ``epochs`` and ``out`` are the framework's defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=epochs,
                        help=f"training epochs of each student (default {epochs})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds (default 0 1 2)")
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="hard-label weight of the distilled student (default 0.5)")
    parser.add_argument("--out", type=Path, default=Path(out), help="output folder")
    return parser


def verdict(gains: list[float]) -> str:
    """Which student won, from the paired per-seed differences (same initial weights and order)."""
    spread = f"per seed {', '.join(f'{g:+.2f}' for g in gains)}; mean {np.mean(gains):+.2f} points"
    if all(g > 0 for g in gains):
        return f"distillation helped on every seed ({spread} of test top-1)"
    if all(g < 0 for g in gains):
        return f"distillation did NOT help: the student trained on labels alone won on every seed ({spread})"
    return (f"no consistent difference: distillation helped on some seeds and not on others ({spread}); "
            "on this small, easy data set the half-width student learns about as well from labels alone")


def report(framework: str, args: argparse.Namespace, params: tuple[int, int], teacher_top1: float,
           rows: list[list[object]], results: dict[str, list[tuple[float, float]]]) -> None:
    """Print the run: teacher and students (``params`` = teacher's, student's), a row per seed and
    student, the means over seeds and the verdict."""
    print(f"{framework} distillation on digits: teacher = seed CNN ({human_count(params[0])} params, "
          f"test top-1 {teacher_top1:.2f} %), students = half width ({human_count(params[1])} params), "
          f"{args.epochs} epochs each, T={args.temperature}, alpha={args.alpha}")
    print(format_table(["seed", "student", "test top-1 %", "agrees with teacher %", "val top-1 %"], rows))
    mean = {name: np.mean(values, axis=0) for name, values in results.items()}
    print(format_table(["mean over seeds", "test top-1 %", "agrees with teacher %"],
                       [[name, f"{m[0]:.2f}", f"{m[1]:.2f}"] for name, m in mean.items()]))
    print(verdict([d[0] - l[0] for d, l in zip(results["distilled"], results["labels alone"])]))
