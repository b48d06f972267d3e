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

Side by side, the sessions do not spin (:func:`side_by_side_settings`) and each turn of a model
starts with one UNTIMED call. ONNX Runtime's worker threads spin-wait for more work after a call;
with several sessions on the same cores, the idle sessions' spinning threads steal time from the
one being timed, and how much depends on which model ran before. all-MiniLM-L6-v2 on 2 threads,
fp32 / int8 medians: batch 8, spinning, no settling call: 109 / 64 ms (1.71x, a near-constant
~35 ms added to both); batch 1, spinning, with settling calls: fp32 anywhere from 10.7 to 34.9
ms depending on the rotation. Without spinning the same pairs read 92 / 42 ms (2.2x) and 13.7 /
8.0 ms (1.7x) and repeat within a few percent, the ratios of the quietest spinning runs (each
model in blocks of ten calls). The settling call keeps caches and allocator arenas of the
timed model warm.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import numpy as np

from onnx_compress.errors import SettingError
from onnx_compress.runtime.session import ModelSource, Runner, SessionSettings

__all__ = ["Latency", "Comparison", "benchmark", "compare", "compare_many", "side_by_side_settings"]


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


def side_by_side_settings(settings: SessionSettings | None) -> SessionSettings:
    """Session settings for timing several models in one process: spinning off unless the
    caller chose (see the module docstring)."""
    settings = settings or SessionSettings()
    return settings if settings.spinning is not None else dataclasses.replace(settings, spinning=False)


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

    Models given as paths or ``ir.Model`` get sessions from :func:`side_by_side_settings`
    (no spinning unless ``settings`` says); a :class:`Runner` is used as it is. Each round times
    every model once, after one untimed settling call (see the module docstring); the order rotates from round to round so that no model always runs right after
    the same neighbour. Ratios between the returned latencies are the numbers to quote.
    """
    _check_counts(runs, warmup)
    if not models:
        raise SettingError("compare_many needs at least one model")
    timing = side_by_side_settings(settings)
    runners = [m if isinstance(m, Runner) else Runner(m, timing) for m in models]
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
