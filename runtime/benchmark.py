"""Latency benchmarks in ONNX Runtime, alone or side by side.

:func:`benchmark` times ``runs`` calls of one session on fixed inputs after ``warmup`` calls
and reports the median and 90th percentile latency (milliseconds per call) and throughput
(samples per second at the median).

:func:`compare` measures two models in ONE run, interleaved A, B, B, A, A, B, ... so that
drift in machine load (other processes, thermal state) hits both alike, and reports
``speedup = median(A) / median(B)``: above 1 means B is faster. :func:`compare_many` does the
same for any number of models (round-robin, rotating order), e.g. every stage of a pipeline
against the original. Speed is a measurement on a
shared machine, not a constant: quote ratios measured side by side, never absolute numbers
from different runs.

Side by side, each turn of a model starts with one UNTIMED call: after a call, ONNX Runtime's
worker threads spin-wait for more work for a while, so the first call of the next session
competes with the previous session's spinning threads. Timing that call added a near-constant
~35 ms per call to every model of all-MiniLM-L6-v2 at batch 8 on 2 threads (fp32 109 ms, int8
64 ms: 1.71x), which squeezes every ratio towards 1; with the settling call the same pair read
90 ms / 43 ms (2.1x), the same ratio as timing each model in blocks of four calls.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import numpy as np

from onnx_compress.errors import SettingError
from onnx_compress.runtime.session import ModelSource, Runner, SessionSettings

__all__ = ["Latency", "Comparison", "benchmark", "compare", "compare_many"]


@dataclasses.dataclass(frozen=True)
class Latency:
    """Latency statistics of one model, in milliseconds per call."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    batch: int
    throughput: float  # samples per second at the median latency
    providers: tuple[str, ...] = ()

    @classmethod
    def from_samples(cls, samples_ns: list[int], batch: int, providers: tuple[str, ...]) -> Latency:
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        median = float(np.median(ms))
        return cls(
            median_ms=median,
            p90_ms=float(np.percentile(ms, 90)),
            mean_ms=float(ms.mean()),
            min_ms=float(ms.min()),
            runs=len(samples_ns),
            batch=batch,
            throughput=batch / (median / 1e3) if median > 0 else float("inf"),
            providers=providers,
        )

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two models measured in one interleaved run; ``speedup`` > 1 means B is faster than A."""

    a: Latency
    b: Latency

    @property
    def speedup(self) -> float:
        return self.a.median_ms / self.b.median_ms

    def as_dict(self) -> dict[str, object]:
        return {"a": self.a.as_dict(), "b": self.b.as_dict(), "speedup": self.speedup}


def _check_counts(runs: int, warmup: int) -> None:
    if runs < 1:
        raise SettingError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise SettingError(f"warmup must be >= 0, got {warmup}")


def _batch_of(feeds: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def _timed_call(runner: Runner, feeds: dict[str, np.ndarray]) -> int:
    start = time.perf_counter_ns()
    runner.run(feeds)
    return time.perf_counter_ns() - start


def benchmark(
    model: ModelSource | Runner,
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int = 100,
    warmup: int = 10,
    settings: SessionSettings | None = None,
) -> Latency:
    """Median / p90 latency of one model on ``feeds`` (see the module docstring)."""
    _check_counts(runs, warmup)
    runner = model if isinstance(model, Runner) else Runner(model, settings)
    feeds = dict(feeds)
    for _ in range(warmup):
        runner.run(feeds)
    samples = [_timed_call(runner, feeds) for _ in range(runs)]
    return Latency.from_samples(samples, _batch_of(feeds), tuple(runner.providers))


def compare_many(
    models: Sequence[ModelSource | Runner],
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int = 100,
    warmup: int = 10,
    settings: SessionSettings | None = None,
) -> list[Latency]:
    """Latency of several models measured in ONE run, round-robin.

    Each round times every model once, after one untimed settling call (see the module
    docstring); the order rotates from round to round so that no model always runs right after
    the same neighbour. Ratios between the returned latencies are the numbers to quote.
    """
    _check_counts(runs, warmup)
    if not models:
        raise SettingError("compare_many needs at least one model")
    runners = [m if isinstance(m, Runner) else Runner(m, settings) for m in models]
    feeds = dict(feeds)
    for _ in range(warmup):
        for runner in runners:
            runner.run(feeds)
    samples: list[list[int]] = [[] for _ in runners]
    count = len(runners)
    for i in range(runs):
        shift = i % count
        order = list(range(shift, count)) + list(range(shift))
        if (i // count) % 2:
            order.reverse()
        for index in order:
            if count > 1:
                runners[index].run(feeds)  # settle: the previous session's threads stop spinning
            samples[index].append(_timed_call(runners[index], feeds))
    batch = _batch_of(feeds)
    return [Latency.from_samples(s, batch, tuple(r.providers)) for s, r in zip(samples, runners)]


def compare(
    model_a: ModelSource | Runner,
    model_b: ModelSource | Runner,
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int = 100,
    warmup: int = 10,
    settings: SessionSettings | None = None,
) -> Comparison:
    """Interleaved side-by-side latency of two models on the same inputs (A B B A ...)."""
    a, b = compare_many([model_a, model_b], feeds, runs=runs, warmup=warmup, settings=settings)
    return Comparison(a=a, b=b)
