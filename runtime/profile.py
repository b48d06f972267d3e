"""Where a model's time goes in ONNX Runtime: per-operator totals from its own profiler.

:func:`profile_ops` runs a model ``runs`` times on fixed inputs with ONNX Runtime's profiler on
(``SessionOptions.enable_profiling``) and sums the kernel time of every node by operator type:
per run, in milliseconds, and as a share of all kernel time. The operators are the ones that
really run, i.e. after ONNX Runtime's session optimizer (its fusions into
``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat``, ``SkipLayerNormalization``, ... are
visible). :attr:`OpProfile.gemm_share` is the share of the matrix-product kernels
(:data:`GEMM_OPS`): what int8 or a smaller width speeds up, against what it leaves alone.

Limits
    Kernel time is wall-clock time per node: on a machine shared with other jobs every kernel is
    stretched by the time its threads wait for a core, so read the shares, not the milliseconds,
    and compare models with :func:`~onnx_compress.runtime.benchmark.compare_many`. The time
    between kernels (session overhead, memory planning) is not in the totals. The profiler's
    own cost is small per node but not zero.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnx_compress.errors import RuntimeSessionError, SettingError, one_line
from onnx_compress.model_io import materialized_path, model_bytes, needs_file
from onnx_compress.runtime.session import ModelSource, SessionSettings, resolve_providers

__all__ = ["GEMM_OPS", "OpTime", "OpProfile", "profile_ops"]

#: operator types that are matrix products (float, integer and weight-only quantized)
GEMM_OPS = frozenset({
    "MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "QLinearMatMul", "QGemm", "MatMulNBits", "Conv", "ConvInteger", "QLinearConv", "FusedConv", "NchwcConv",
})


@dataclasses.dataclass(frozen=True)
class OpTime:
    """One operator type: nodes run per call, kernel milliseconds per call, share of all kernel time."""

    op_type: str
    nodes: int
    ms: float
    share: float


@dataclasses.dataclass(frozen=True)
class OpProfile:
    """Per-operator kernel time of one model, largest first."""

    ops: tuple[OpTime, ...]
    runs: int
    batch: int | None

    @property
    def total_ms(self) -> float:
        """Kernel milliseconds per call, all operators."""
        return sum(op.ms for op in self.ops)

    def share_of(self, op_types: frozenset[str] | set[str]) -> float:
        """Share of kernel time spent in ``op_types``."""
        return sum(op.share for op in self.ops if op.op_type in op_types)

    @property
    def gemm_share(self) -> float:
        """Share of kernel time in matrix products (:data:`GEMM_OPS`)."""
        return self.share_of(GEMM_OPS)

    def as_dict(self) -> dict[str, object]:
        return {"runs": self.runs, "batch": self.batch, "total_ms": self.total_ms, "gemm_share": self.gemm_share,
                "ops": [dataclasses.asdict(op) for op in self.ops]}

    def table(self, top: int = 12) -> list[list[str]]:
        """Rows (op type, nodes, ms per call, share) of the ``top`` largest, for a text table."""
        return [[op.op_type, str(op.nodes), f"{op.ms:.2f}", f"{100 * op.share:.1f} %"] for op in self.ops[:top]]


def _session(model: ModelSource, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        if isinstance(model, ir.Model):
            if needs_file(model):
                with materialized_path(model) as path:
                    return ort.InferenceSession(str(path), options, providers=providers)
            return ort.InferenceSession(model_bytes(model), options, providers=providers)
        if isinstance(model, bytes):
            return ort.InferenceSession(model, options, providers=providers)
        return ort.InferenceSession(str(Path(model)), options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
        raise RuntimeSessionError(f"ONNX Runtime could not load the model: {one_line(exc)}") from exc


def profile_ops(model: ModelSource, feeds: Mapping[str, np.ndarray], *, settings: SessionSettings | None = None,
                runs: int = 20, warmup: int = 3) -> OpProfile:
    """Kernel time per operator type over ``runs`` calls on ``feeds`` (after ``warmup`` calls).

    Raises:
        SettingError: ``runs`` < 1 or ``warmup`` < 0.
        RuntimeSessionError: ONNX Runtime cannot load or run the model.
    """
    if runs < 1 or warmup < 0:
        raise SettingError(f"profile_ops needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    settings = settings or SessionSettings()
    feeds = dict(feeds)
    totals: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="onnx-compress-profile-") as scratch:
        options = settings.session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = _session(model, options, resolve_providers(settings.provider))
        try:
            for _ in range(warmup):
                session.run(None, feeds)
            for _ in range(runs):
                session.run(None, feeds)
        except Exception as exc:
            raise RuntimeSessionError(f"ONNX Runtime failed to run the model: {one_line(exc)}") from exc
        events = json.loads(Path(session.end_profiling()).read_text())
    # the profiler records from the session's start: count the nodes of the timed calls only
    calls = [event for event in events if event.get("cat") == "Session" and event.get("name") == "model_run"]
    first_timed = calls[warmup]["ts"] if len(calls) > warmup else 0
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if event.get("ts", 0) < first_timed:
            continue
        op_type = event.get("args", {}).get("op_name", "?")
        totals[op_type] += int(event.get("dur", 0))
        nodes[op_type] += 1
    grand = sum(totals.values()) or 1
    ops = tuple(OpTime(op_type=op, nodes=nodes[op] // runs, ms=micro / 1e3 / runs, share=micro / grand)
                for op, micro in totals.most_common())
    batch = next((int(v.shape[0]) for v in feeds.values() if getattr(v, "ndim", 0) >= 1), None)
    return OpProfile(ops=ops, runs=runs, batch=batch)
