"""ONNX Runtime sessions: provider choice, thread settings, batched runs.

``provider="auto"`` picks CUDA when the installed onnxruntime build offers
``CUDAExecutionProvider`` and falls back to the CPU otherwise; the choice is logged, and
:attr:`Runner.providers` says what the session really uses (ONNX Runtime silently drops a
provider it cannot initialise, so the list is read back from the session).

A :class:`Runner` accepts an ``onnx_ir.Model`` (serialized in memory below 2 GB, written to a
temporary folder with external data above), a path, or serialized bytes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnx_compress.data import Dataset, InputSpec
from onnx_compress.errors import RuntimeSessionError, SettingError, one_line
from onnx_compress.model_io import materialized_path, model_bytes, needs_file
from onnx_compress.setting import check_fields, setting

__all__ = ["Provider", "SessionSettings", "Runner", "resolve_providers", "cuda_available"]

logger = logging.getLogger(__name__)

Provider = Literal["auto", "cpu", "cuda"]
_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def cuda_available() -> bool:
    """Whether the installed onnxruntime build offers the CUDA execution provider."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


def resolve_providers(provider: Provider) -> list[str]:
    """ONNX Runtime provider names for a provider choice (CPU is always the fallback)."""
    if provider == "auto":
        chosen = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda_available() else [
            "CPUExecutionProvider"
        ]
        logger.info("provider auto -> %s", chosen[0])
        return chosen
    if provider == "cuda":
        if not cuda_available():
            raise SettingError(
                "provider 'cuda' requested, but this onnxruntime build has no CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu or use --provider cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    raise SettingError(f"provider must be one of auto, cpu, cuda; got {provider!r}")


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    """How to build an ONNX Runtime session (each field's help text is its declaration below)."""

    provider: Provider = setting("auto", choices=("auto", "cpu", "cuda"), help="""
        ONNX Runtime execution provider: auto = CUDA when available, else CPU""")
    intra_op_threads: int | None = setting(None, kind="int", range=">= 1", flag="--threads", help="""
        intra-op threads of ONNX Runtime, inside one operator (default: ONNX Runtime's choice, one
        per physical core)""")
    inter_op_threads: int | None = setting(None, kind="int", range=">= 1", cli=False,
                                           help="threads across operators (only used by parallel execution mode)")
    optimization: Literal["disable", "basic", "extended", "all"] = setting(
        "all", choices=tuple(_OPT_LEVELS), cli=False, help="graph optimization level")
    spinning: bool | None = setting(None, kind="bool", cli=False, help="""
        whether ONNX Runtime's worker threads spin-wait for work between operators and calls; None
        keeps ONNX Runtime's default (on); off saves CPU when calls are sporadic or cores are shared
        (a server: on 2 cores, the seed CNN's CPU time per sporadic call fell from ~2 ms to ~0.5 ms)""")

    def __post_init__(self) -> None:
        check_fields(self)

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = _OPT_LEVELS[self.optimization]
        options.log_severity_level = 3  # errors only; warnings surface through our own logging
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        if self.inter_op_threads is not None:
            options.inter_op_num_threads = self.inter_op_threads
        if self.spinning is not None:
            flag = "1" if self.spinning else "0"
            options.add_session_config_entry("session.intra_op.allow_spinning", flag)
            options.add_session_config_entry("session.inter_op.allow_spinning", flag)
        return options


ModelSource = ir.Model | str | os.PathLike[str] | bytes


def _ort_dtype(type_str: str) -> np.dtype:
    # ORT describes types as "tensor(float)", "tensor(int64)", ...
    name = type_str.removeprefix("tensor(").removesuffix(")")
    mapping = {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool",
               "string": "object"}
    return np.dtype(mapping.get(name, name))


class Runner:
    """One ONNX Runtime session with the model's input specs and batched helpers."""

    def __init__(self, model: ModelSource, settings: SessionSettings | None = None) -> None:
        self.settings = settings or SessionSettings()
        providers = resolve_providers(self.settings.provider)
        options = self.settings.session_options()
        try:
            if isinstance(model, ir.Model):
                if needs_file(model):
                    with materialized_path(model) as path:
                        self.session = ort.InferenceSession(str(path), options, providers=providers)
                else:
                    self.session = ort.InferenceSession(model_bytes(model), options, providers=providers)
            elif isinstance(model, bytes):
                self.session = ort.InferenceSession(model, options, providers=providers)
            else:
                self.session = ort.InferenceSession(str(Path(model)), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail / InvalidGraph / RuntimeException types
            raise RuntimeSessionError(
                f"ONNX Runtime could not load the model: {one_line(exc)}"
            ) from exc
        self.providers: list[str] = self.session.get_providers()
        self.input_specs: list[InputSpec] = [
            InputSpec(name=i.name, dtype=_ort_dtype(i.type), shape=tuple(i.shape))
            for i in self.session.get_inputs()
        ]
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run once; ORT errors (bad shapes at run time) become RuntimeSessionError."""
        try:
            return self.session.run(list(outputs) if outputs else None, dict(feeds))
        except Exception as exc:
            raise RuntimeSessionError(f"ONNX Runtime failed to run the model: {one_line(exc)}") from exc

    def run_dataset(self, data: Dataset, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Run every sample of ``data`` in batches; outputs concatenated along axis 0."""
        data.check_against(self.input_specs)
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for feeds in data.batches(batch_size):
            feeds = {spec.name: feeds[spec.name] for spec in self.input_specs}
            for name, value in zip(self.output_names, self.run(feeds)):
                chunks[name].append(value)
        return {name: np.concatenate(values) for name, values in chunks.items()}

