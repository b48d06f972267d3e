"""The speed guard: is the quantized model faster than its input, on this machine?

Measurement
    The input model and a candidate run side by side, interleaved (A B B A ...,
    :func:`onnx_compress.runtime.benchmark.compare`), on the same batch, in ONNX Runtime on the
    CPU, in ``blocks`` consecutive blocks (default 5). Each block gives a ratio of median
    latencies; the reported ``speedup`` is the median of the block ratios. The number of runs
    adapts to the model: as many pairs as fit in about ``seconds`` (at least 3 per block, at most
    200 in all) after a short warm-up, unless given.

Verdict (relative to ``threshold``, normally 1.0)
    ``faster`` when the median block ratio reaches the threshold; ``slower`` when EVERY block is
    below it, by its ratio of medians or by its ratio of fastest runs (with 5 blocks, a sign
    test at p = 1/32 for each statistic; the fastest run of a block is what a burst of load on a
    busy machine leaves intact), and the median is more than 3 % below it (a consistent 1 %
    difference is real but not worth giving up 4x in size); ``inconclusive`` otherwise: not
    measurably faster. Only
    ``slower`` makes the guard drop op types; ``inconclusive`` is reported loudly. On a shared
    machine a single ratio of medians flips around 1.0 from run to run; the sign test keeps the
    decisions that change the model for differences larger than the noise.

Objective (``QuantizeSettings.objective``; :func:`acceptable`)
    ``size``: any result is acceptable (a slower one is written with a loud warning).
    ``latency``: acceptable while not measurably slower during the search, and the result
    handed over must be ``faster``. ``balanced``: acceptable when not measurably slower, or
    when its size gain is at least the square of its loss in speed: ``size_ratio * speedup^2
    >= 1`` (speed counts twice: int8 of a float model, ~4x smaller, may cost up to 2x in speed;
    int8 after pruning and factoring, ~2x smaller, only 1.41x. Measured on fresh seed CNNs after
    ``small``'s pruning: 2.03x smaller at 0.51x and 2.44x at 0.49x are refused, 2.72x at 0.83x
    is kept; the issue's 1.65x smaller at 0.60x is refused. With ``min_speedup`` set, the
    product must reach it).

:func:`drop_slow_op_types` is the guard's retry: while the model is not acceptable, try the
model without each remaining op type, keep the removal that helps most, and stop when it is
acceptable or nothing helps (greedy backward elimination; ``k`` op types cost at most
``k (k + 1) / 2`` extra quantizations, and models have one to four weight op types).

Limits: latency is a measurement, not a constant; the guard reports what it measured and never
asserts beyond it. The inputs come from the validation data, else the calibration data, else
random inputs of the model's static shape; a model with symbolic axes other than the batch and
no data cannot be timed (the result says so).
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
from onnx_compress.stats import size_on_disk

__all__ = ["benchmark_feeds", "measure_speed", "drop_slow_op_types", "acceptable", "Elimination"]

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


def _runs_for(a: Runner, b: Runner, feeds: Mapping[str, np.ndarray], seconds: float, blocks: int) -> int:
    for runner in (a, b, a, b):  # warm-up, and a first estimate of one pair's cost
        runner.run(feeds)
    start = time.perf_counter()
    a.run(feeds)
    b.run(feeds)
    pair = max(time.perf_counter() - start, 1e-6)
    return int(min(200, max(3 * blocks, seconds / pair)))


#: a candidate within this fraction of the threshold is never called "slower" (practical significance)
SLOWER_MARGIN = 0.03


def verdict(block_speedups: Sequence[float], block_min_speedups: Sequence[float], threshold: float) -> str:
    """``faster``, ``slower`` or ``inconclusive`` (see the module docstring)."""
    median = float(np.median(block_speedups))
    if median >= threshold:
        return "faster"
    consistent = all(r < threshold for r in block_speedups) or all(r < threshold for r in block_min_speedups)
    if consistent and median < threshold * (1.0 - SLOWER_MARGIN):
        return "slower"
    return "inconclusive"


def measure_speed(
    input_path: Path,
    candidate_path: Path,
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int | None = None,
    threads: int | None = None,
    seconds: float = 2.0,
    blocks: int = 5,
    threshold: float = 1.0,
    label: str = "result",
) -> SpeedCheck:
    """Interleaved benchmark of the candidate against the input, in blocks, with a verdict."""
    settings = SessionSettings(provider="cpu", intra_op_threads=threads)
    a = Runner(input_path, settings)
    b = Runner(candidate_path, settings)
    total = runs if runs is not None else _runs_for(a, b, feeds, seconds, blocks)
    per_block = max(1, total // blocks)
    results = [compare(a, b, feeds, runs=per_block, warmup=1 if i == 0 else 0, rounds=1) for i in range(blocks)]
    ratios = [r.speedup for r in results]
    min_ratios = [r.a.min_ms / r.b.min_ms for r in results]
    batch = int(next(iter(feeds.values())).shape[0])
    check = SpeedCheck(
        input_ms=float(np.median([r.a.median_ms for r in results])),
        output_ms=float(np.median([r.b.median_ms for r in results])),
        speedup=float(np.median(ratios)),
        batch=batch,
        runs=per_block * blocks,
        threads=threads,
        label=label,
        block_speedups=[float(r) for r in ratios],
        verdict=verdict(ratios, min_ratios, threshold),
    )
    logger.info("speed guard (%s): %.2fx, %s (blocks %s; %.3f -> %.3f ms, batch %d, %d runs)", label,
                check.speedup, check.verdict, ", ".join(f"{r:.2f}" for r in ratios), check.input_ms,
                check.output_ms, batch, check.runs)
    return check


def acceptable(objective: str, check: SpeedCheck, size_ratio: float, *, threshold: float = 1.0,
               final: bool = False) -> bool:
    """Whether a result measured as ``check`` and ``size_ratio`` times smaller than the input
    serves ``objective`` (see the module docstring; ``threshold`` is the speed-up asked for,
    normally 1.0, which ``balanced`` asks of ``size_ratio * speedup``); ``final``: the result to
    hand over."""
    if objective == "size":
        return True
    if objective == "latency":
        return check.verdict == "faster" if final else check.verdict != "slower"
    return check.verdict != "slower" or size_ratio * check.speedup ** 2 >= threshold


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
    ok: Callable[[Path, SpeedCheck], bool] | None = None,
) -> Elimination:
    """Greedy backward elimination of op types while the model is not acceptable.

    ``try_without(kept)`` quantizes with only ``kept`` op types and measures it (None when that
    leaves nothing to quantize); ``ok(path, check)`` says whether a result is acceptable
    (default: not measurably slower). Each round removes one op type: among the removals whose
    result is acceptable, the one whose model is smallest on disk (speed is the constraint, size
    the aim: on a 0.1 ms CNN, "Conv only" and "Gemm only" may both be fine, and the Gemm holds
    90 % of the weights); when no removal is acceptable, the fastest. Returns the last accepted
    configuration in ``best``, or ``best=None`` when even the best configuration tried is not
    acceptable (the caller then decides).
    """
    def default_ok(path: Path, check: SpeedCheck) -> bool:
        return check.verdict != "slower"

    ok = ok or default_ok
    kept = list(op_types)
    dropped: dict[str, str] = {}
    trials: list[dict[str, object]] = []
    best = current
    while not ok(*best) and len(kept) > 1:
        options = []
        for op in kept:
            remaining = [o for o in kept if o != op]
            outcome = try_without(remaining)
            if outcome is None:
                continue
            trials.append({"op_types": remaining, "speedup": outcome[1].speedup, "verdict": outcome[1].verdict,
                           "size_bytes": size_on_disk(outcome[0])})
            options.append((outcome[1].speedup, op, outcome))
        if not options:
            break
        fine = [item for item in options if ok(*item[2])]
        if fine:
            speedup, op, outcome = min(fine, key=lambda item: (size_on_disk(item[2][0]), -item[0]))
        else:
            speedup, op, outcome = max(options, key=lambda item: item[0])
            if speedup <= best[1].speedup:
                break  # removing any op type makes it no better
        dropped[op] = (f"with {op} quantized the model ran {best[1].speedup:.2f}x the input's speed; "
                       f"without it {speedup:.2f}x")
        kept.remove(op)
        best = outcome
    if not ok(*best):
        return Elimination(kept, dropped, None, trials)
    return Elimination(kept, dropped, best, trials)
