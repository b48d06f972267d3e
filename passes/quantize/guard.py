"""The speed guard: is the quantized model faster than its input, on this machine?

The input model and a candidate run side by side in ONE interleaved loop (A B B A ...,
:func:`onnx_compress.runtime.benchmark.compare`) on the same batch, in ONNX Runtime on the CPU;
``speedup = median(input) / median(candidate)``. The number of runs adapts to the model: as many
pairs as fit in about ``seconds`` (between 10 and 200) after a short warm-up, unless given.

:func:`drop_slow_op_types` is the guard's retry in auto mode: while the model is not faster,
try the model without each remaining op type, keep the removal that helps most, and stop when
it is fast enough or nothing helps (greedy backward elimination; ``k`` op types cost at most
``k (k + 1) / 2`` extra quantizations, and models have one to four weight op types).

Limits: latency on a shared machine is noisy (a few percent); the guard reports what it measured
and never asserts beyond it. The inputs come from the validation data, else the calibration
data, else random inputs of the model's static shape; a model with symbolic axes other than the
batch and no data cannot be timed (the result says so).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from onnx_compress.data import Dataset, InputSpec, synthetic_inputs
from onnx_compress.errors import DataError
from onnx_compress.passes.quantize.result import SpeedCheck
from onnx_compress.runtime.benchmark import compare
from onnx_compress.runtime.session import Runner, SessionSettings

__all__ = ["benchmark_feeds", "measure_speed", "drop_slow_op_types", "Elimination"]

logger = logging.getLogger(__name__)


def benchmark_feeds(
    specs: Sequence[InputSpec], sources: Sequence[Dataset | None], batch: int
) -> tuple[dict[str, np.ndarray] | None, str]:
    """(feeds, where they came from) for the guard, or (None, why not)."""
    fixed = specs[0].shape[0] if specs and specs[0].shape and isinstance(specs[0].shape[0], int) \
        and specs[0].shape[0] > 0 else None
    batch = fixed or batch
    for data in sources:
        if data is not None:
            take = data.take(batch)
            return {spec.name: take.inputs[spec.name] for spec in specs}, f"{len(take)} data samples"
    try:
        return synthetic_inputs(specs, batch=batch), f"random inputs of batch {batch}"
    except DataError as exc:
        return None, f"speed not measured: no data to time the model with ({exc})"


def _runs_for(a: Runner, b: Runner, feeds: Mapping[str, np.ndarray], seconds: float) -> int:
    for runner in (a, b, a, b):  # warm-up, and a first estimate of one pair's cost
        runner.run(feeds)
    start = time.perf_counter()
    a.run(feeds)
    b.run(feeds)
    pair = max(time.perf_counter() - start, 1e-6)
    return int(min(200, max(10, seconds / pair)))


def measure_speed(
    input_path: Path,
    candidate_path: Path,
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int | None = None,
    threads: int | None = None,
    seconds: float = 2.0,
    label: str = "result",
) -> SpeedCheck:
    """Interleaved benchmark of the candidate against the input (see the module docstring)."""
    settings = SessionSettings(provider="cpu", intra_op_threads=threads)
    a = Runner(input_path, settings)
    b = Runner(candidate_path, settings)
    count = runs if runs is not None else _runs_for(a, b, feeds, seconds)
    result = compare(a, b, feeds, runs=count, warmup=2)
    batch = int(next(iter(feeds.values())).shape[0])
    check = SpeedCheck(input_ms=result.a.median_ms, output_ms=result.b.median_ms, speedup=result.speedup,
                       batch=batch, runs=count, threads=threads, label=label)
    logger.info("speed guard (%s): %.2fx (%.3f -> %.3f ms, batch %d, %d runs)", label, check.speedup,
                check.input_ms, check.output_ms, batch, count)
    return check


@dataclasses.dataclass
class Elimination:
    """The op types kept, those dropped with the speedups that justified it, and every trial."""

    kept: list[str]
    dropped: dict[str, str]  # op type -> why
    best: tuple[Path, SpeedCheck] | None
    trials: list[dict[str, object]]


def drop_slow_op_types(
    op_types: Sequence[str],
    current: tuple[Path, SpeedCheck],
    try_without: Callable[[list[str]], tuple[Path, SpeedCheck] | None],
    min_speedup: float,
) -> Elimination:
    """Greedy backward elimination of op types until the model is fast enough.

    ``try_without(kept)`` quantizes with only ``kept`` op types and measures it (None when that
    leaves nothing to quantize). Returns the last accepted configuration in ``best``, or
    ``best=None`` when no configuration with at least one op type reached ``min_speedup``
    while the remaining one still was not faster (the caller then decides).
    """
    kept = list(op_types)
    dropped: dict[str, str] = {}
    trials: list[dict[str, object]] = []
    best = current
    while best[1].speedup < min_speedup and len(kept) > 1:
        options = []
        for op in kept:
            remaining = [o for o in kept if o != op]
            outcome = try_without(remaining)
            if outcome is None:
                continue
            trials.append({"op_types": remaining, "speedup": outcome[1].speedup})
            options.append((outcome[1].speedup, op, outcome))
        if not options:
            break
        speedup, op, outcome = max(options, key=lambda item: item[0])
        if speedup <= best[1].speedup:
            break  # removing any op type makes it no better
        dropped[op] = (f"with {op} quantized the model ran {best[1].speedup:.2f}x the input's speed; "
                       f"without it {speedup:.2f}x")
        kept.remove(op)
        best = outcome
    if best[1].speedup < min_speedup:
        return Elimination(kept, dropped, None, trials)
    return Elimination(kept, dropped, best, trials)
