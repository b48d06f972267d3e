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

Side by side, models are timed in settled BLOCKS: each turn first runs the model untimed for
``settle_ms`` (150 ms by default, one call at least), then times a few calls in a row. ONNX
Runtime's worker threads spin-wait between operators (fast dispatch; on by default, as served)
and keep spinning for up to ~100 ms after a call returns, so with several sessions on the same
cores the previous session's threads steal time from the next one: all-MiniLM-L6-v2 on 2
threads, timed call by call in strict rotation, read fp32 110 ms / int8 56 ms at batch 8, and
the int8 model's batch-1 call took 11.6 ms right after an fp32 call, 9.7 ms 50 ms later and 6.3
ms (its quiet time) 100 ms later. The alternatives measured worse: spinning off slows models of
many small operators (the 0.1 ms seed CNN lost half its batch-1 speed-up), and ONNX Runtime's
``session.force_spinning_stop`` wakes the threads at every call (+0.03 ms, a third of that
CNN's int8 latency). Settled blocks read each model as it runs alone in its own process.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from onnx_compress.data import Dataset, DataSource, load_data, synthetic_inputs
from onnx_compress.errors import DataError, SettingError
from onnx_compress.runtime.session import ModelSource, Runner, SessionSettings
from onnx_compress.table import format_table

#: untimed calls before each timed block, side by side (see the module docstring)
SETTLE_MS = 150.0

__all__ = ["Latency", "Comparison", "benchmark", "compare", "compare_many", "latency_table", "bench_feeds",
           "BenchReport", "bench_files"]


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


def latency_table(named: Sequence[tuple[object, Latency]]) -> str:
    """A row per (name, latency): median and p90 milliseconds per call, samples per second."""
    return format_table(["model", "median ms", "p90 ms", "samples/s"],
                        [[str(name), t.median_ms, t.p90_ms, t.throughput] for name, t in named])


def bench_feeds(runner: Runner, data: DataSource | None, batch: int,
                dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """The inputs one timed call gets: the first ``batch`` samples of ``data`` (checked against the
    model's inputs), or seeded random inputs of that batch size when ``data`` is None (``dims``: the
    sizes of symbolic axes other than the batch)."""
    if data is None:
        return synthetic_inputs(runner.input_specs, batch=batch, dims=dims)
    dataset = load_data(data)
    dataset.check_against(runner.input_specs)
    if len(dataset) < batch:
        raise DataError(f"the data has {len(dataset)} samples, fewer than the batch of {batch}")
    return {spec.name: dataset.inputs[spec.name][:batch] for spec in runner.input_specs}


def _settle(runner: Runner, feeds: dict[str, np.ndarray], settle_ms: float) -> None:
    """Untimed calls for at least ``settle_ms`` (one at least): the previous session's threads
    stop spinning meanwhile, and this model's caches are warm when the timing starts."""
    deadline = time.perf_counter() + settle_ms / 1e3
    runner.run(feeds)
    while time.perf_counter() < deadline:
        runner.run(feeds)


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
    rounds: int | None = None,
    settle_ms: float = SETTLE_MS,
) -> list[Latency]:
    """Latency of several models measured in ONE run, in settled blocks, round-robin.

    ``rounds`` rounds (default ``min(runs, 10)``); in each, every model runs untimed for
    ``settle_ms`` and then times ``ceil(runs / rounds)`` calls (so at least ``runs`` samples per
    model). The order rotates from round to round so that no model always runs right after the
    same neighbour. Ratios between the returned latencies are the numbers to quote.
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
    rounds = min(runs, 10) if rounds is None else rounds
    if rounds < 1:
        raise SettingError(f"rounds must be >= 1, got {rounds}")
    per_turn = -(-runs // rounds)
    for i in range(rounds):
        shift = i % count
        order = list(range(shift, count)) + list(range(shift))
        if (i // count) % 2:
            order.reverse()
        for index in order:
            if count > 1:
                _settle(runners[index], feeds, settle_ms)
            samples[index].extend(_timed_call(runners[index], feeds) for _ in range(per_turn))
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
    rounds: int | None = None,
    settle_ms: float = SETTLE_MS,
) -> Comparison:
    """Side-by-side latency of two models on the same inputs, in settled blocks (A B B A ...)."""
    a, b = compare_many([model_a, model_b], feeds, runs=runs, warmup=warmup, settings=settings, rounds=rounds,
                        settle_ms=settle_ms)
    return Comparison(a=a, b=b)


@dataclasses.dataclass(frozen=True)
class BenchReport:
    """What :func:`bench_files` measured: ``model`` alone, or side by side with ``vs`` (then
    ``speedup`` = median of ``vs`` / median of ``model``: above 1, ``model`` is faster)."""

    model: Path
    vs: Path | None
    provider: str
    batch: int
    runs: int
    latency: Latency
    vs_latency: Latency | None = None

    @property
    def speedup(self) -> float | None:
        return None if self.vs_latency is None else self.vs_latency.median_ms / self.latency.median_ms

    def as_dict(self) -> dict[str, object]:
        if self.vs_latency is None:
            return {"model": str(self.model), "provider": self.provider, **self.latency.as_dict()}
        return {"model": str(self.model), "vs": str(self.vs), "provider": self.provider,
                "model_latency": self.latency.as_dict(), "vs_latency": self.vs_latency.as_dict(),
                "speedup": self.speedup}

    def text(self) -> str:
        """The latency table, then how the runs were made (and the speedup, side by side)."""
        note = f"batch {self.batch}, {self.provider}, {self.runs}"
        if self.vs is None or self.vs_latency is None or self.speedup is None:
            return f"{latency_table([(self.model, self.latency)])}\n({note} runs)"
        return (f"{latency_table([(self.model, self.latency), (self.vs, self.vs_latency)])}\n{self.model} is "
                f"{self.speedup:.2f}x {'faster' if self.speedup >= 1 else 'SLOWER'} than {self.vs} (speedup = "
                f"median {self.vs.name} / median {self.model.name}; {note} interleaved runs)")


def bench_files(model: str | os.PathLike[str], vs: str | os.PathLike[str] | None = None, data: DataSource | None = None,
                *, batch: int = 1, dims: Mapping[str, int] | None = None, runs: int = 100, warmup: int = 10,
                settings: SessionSettings | None = None) -> BenchReport:
    """Time ``model`` on :func:`bench_feeds` (``data`` or random inputs of ``batch`` samples), alone or,
    with ``vs``, side by side with it in one interleaved run (:func:`compare`)."""
    runner = Runner(model, settings)
    feeds = bench_feeds(runner, data, batch, dims)
    if vs is None:
        latency = benchmark(runner, feeds, runs=runs, warmup=warmup)
        return BenchReport(Path(model), None, runner.providers[0], batch, runs, latency)
    other = Runner(vs, settings)
    Dataset(inputs=feeds).check_against(other.input_specs, what=f"inputs for {vs}")
    result = compare(other, runner, feeds, runs=runs, warmup=warmup)
    return BenchReport(Path(model), Path(vs), runner.providers[0], batch, runs, result.b, result.a)
