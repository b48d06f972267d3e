"""What the two distillation samples share (``samples/distill_torch.py``, ``samples/distill_keras.py``):
their flags, the experiment (per seed, one half-width student trained twice from the same weights: on
labels alone and distilled) and its report (per-seed and mean test top-1 and agreement, the verdict)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from onnx_compress.samples.script import script_parser
from onnx_compress.table import format_table, human_count

__all__ = ["parser", "run_students", "verdict", "report"]


def parser(doc: str, epochs: int, out: str) -> argparse.ArgumentParser:
    """The samples' flags; ``epochs`` and ``out`` are the framework's defaults."""
    parser = script_parser(doc, out)
    parser.add_argument("--epochs", type=int, default=epochs,
                        help=f"training epochs of each student (default {epochs})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds (default 0 1 2)")
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="hard-label weight of the distilled student (default 0.5)")
    return parser


def run_students(args: argparse.Namespace, teacher: Any, splits: Any, *, distill: Callable[..., Any],
                 narrow: Callable[[Any, float], Any], copy: Callable[[Any], Any], seed_all: Callable[[int], None],
                 predict: Callable[[Any, Any], np.ndarray]) -> tuple[list[list[object]], dict[str, Any], Any]:
    """For every seed in ``args.seeds``: ``narrow(teacher, 0.5)``, two ``copy`` of it trained with the same
    ``distill`` loop, epochs and sample order, on labels alone (alpha 1) and distilled (``args.alpha``).
    Returns the table rows, the (test top-1, agreement with the teacher) of each student kind, and the
    first distilled student."""
    teacher_pred = predict(teacher, splits.test)
    rows: list[list[object]] = []
    results: dict[str, list[tuple[float, float]]] = {"labels alone": [], "distilled": []}
    exported = None
    for seed in args.seeds:
        seed_all(seed)
        base = narrow(teacher, 0.5)
        for name, alpha in (("labels alone", 1.0), ("distilled", args.alpha)):
            student, history = distill(teacher, copy(base), splits.train, epochs=args.epochs,
                                       temperature=args.temperature, alpha=alpha, lr=2e-3, batch_size=64,
                                       val_data=splits.val, seed=seed, progress=False)
            pred = predict(student, splits.test)
            top1 = float((pred == splits.test.labels).mean() * 100)
            agree = float((pred == teacher_pred).mean() * 100)
            results[name].append((top1, agree))
            rows.append([seed, name, f"{top1:.2f}", f"{agree:.2f}", f"{history.val_top1[-1]:.2f}"])
            if name == "distilled" and exported is None:
                exported = student
    return rows, results, exported


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
