"""The steps of the quantization pass, each a function from what the step before it made.

:func:`onnx_compress.passes.quantize.quantize_pass.run` calls them in this order; what flows
between them is a small frozen dataclass:

``prepare`` (:class:`Prepared`) -> ``fuse`` (:class:`Fused`) -> ``select`` (:class:`Plan`)
-> ``smooth`` (:class:`Smoothed`) -> ``quantize`` (:class:`Quantized`) -> ``guard``
(:class:`Guarded`) -> ``keep_budget`` (:class:`Budgeted`) -> ``verdict`` (:class:`Verdict`)
-> ``report`` (:class:`QuantizeResult`).

Every step reads the call's :class:`Inputs` (never changed) and appends what it decided to the
:class:`Journal` (choices, warnings, speed trials, sensitivity ranking, seconds: the result's
account of the run). A step that finds nothing worth doing returns a :class:`Stop` with the
reason instead of its output; the run then hands the input back unchanged (``nothing_to_do``).
User mistakes (bad data, unknown node names) raise from the ``onnx_compress.errors`` family.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from tqdm.auto import tqdm

from onnx_compress.budget import Budget
from onnx_compress.data import Dataset, InputSpec, input_specs, same_data
from onnx_compress.errors import BudgetError, SettingError
from onnx_compress.model_io import weights_nbytes
from onnx_compress.passes.base import CompressionPass
import onnx_compress.passes.quantize.auto as auto
from onnx_compress.passes.quantize.analysis import WEIGHT_ONLY_OP_TYPES, Candidate, ModelAnalysis, analyze
from onnx_compress.passes.quantize.backend import (
    DatasetReader,
    QuantConfig,
    Workspace,
    cleanup,
    file_bytes,
    is_large,
    preprocess_ort,
    preprocess_transformer,
    quantize_file,
)
from onnx_compress.passes.quantize.guard import acceptable, benchmark_feeds, drop_slow_op_types, measure_speed
from onnx_compress.passes.quantize.ranges import METADATA_KEY as RANGES_KEY, trained_ranges
from onnx_compress.passes.quantize.result import (
    Choice,
    ExcludedNode,
    NodeSensitivity,
    QuantizeResult,
    SpeedCheck,
)
from onnx_compress.passes.quantize.sensitivity import choose_exclusions, rank_nodes
from onnx_compress.passes.quantize.settings import QuantizeSettings
from onnx_compress.passes.quantize.smooth import input_absmax, smooth as smooth_weights, smoothing_groups
from onnx_compress.runtime.cpu import CpuFeatures
from onnx_compress.runtime.metrics import Score, resolve_metric
from onnx_compress.runtime.session import Runner, SessionSettings
from onnx_compress.runtime.validate import Evaluator

__all__ = [
    "Budgeted", "Fused", "Guarded", "Inputs", "Journal", "Plan", "Prepared", "Quantized", "Smoothed", "Stop",
    "Verdict", "fuse", "guard", "keep_budget", "prepare", "quantize", "report", "select", "smooth", "verdict",
]

logger = logging.getLogger(__name__)

#: with guard 'auto'/'drop', a result that is not measurably faster must be at least this much smaller
MIN_SIZE_RATIO = 1.05

#: relative output difference above which a pre-processed model is rejected
_PREPROCESS_TOLERANCE = 1e-3


# ====================================================================== what every step reads and writes
@dataclasses.dataclass(frozen=True)
class Inputs:
    """What one call of the pass was given (never changed by a step)."""

    model: ir.Model
    settings: QuantizeSettings
    calibration: Dataset | None
    validation: Dataset | None
    cpu: CpuFeatures
    progress: bool
    workspace: Workspace

    @property
    def session(self) -> SessionSettings:
        return SessionSettings(provider="cpu", intra_op_threads=self.settings.threads)

    @property
    def specs(self) -> list[InputSpec]:
        return input_specs(self.model)

    def fixed_batch(self) -> int | None:
        """The model's batch size when its first input fixes it, else None."""
        specs = self.specs
        if specs and specs[0].shape and isinstance(specs[0].shape[0], int) and specs[0].shape[0] > 0:
            return int(specs[0].shape[0])
        return None

    def eval_batch(self) -> int:
        return self.fixed_batch() or 64

    def reader(self) -> DatasetReader:
        """A calibration data reader for ONNX Runtime's static quantizer."""
        assert self.calibration is not None  # static mode is refused without it
        s = self.settings
        data = self.calibration.take(s.calibration_samples)
        return DatasetReader(data, [spec.name for spec in self.specs], self.fixed_batch() or s.calibration_batch,
                             progress=self.progress)

    def evaluator(self, reference: Path, data: Dataset) -> Evaluator:
        """Scores models against ``reference`` on ``data`` with the budget metric."""
        return Evaluator(reference, data, self.settings.metric, batch_size=self.eval_batch(), settings=self.session)


@dataclasses.dataclass
class Journal:
    """The account of the run that every step appends to (the result's choices, warnings, trials)."""

    choices: list[Choice] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    speed_trials: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    ranking: list[NodeSensitivity] = dataclasses.field(default_factory=list)
    #: seconds per step (reported: where the time went)
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))

    def note(self, choice: Choice | None) -> None:
        if choice is not None:
            self.choices.append(choice)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] += time.perf_counter() - started


@dataclasses.dataclass(frozen=True)
class Stop:
    """The run ends here: nothing worth doing, for ``reason``; the input is handed back."""

    reason: str
    mode: str


# ====================================================================== what flows between the steps
@dataclasses.dataclass(frozen=True)
class Prepared:
    """The checked input in the workspace (unique node names), its analysis, mode and objective."""

    input_path: Path
    analysis: ModelAnalysis
    mode: str
    objective: str


@dataclasses.dataclass(frozen=True)
class Fused:
    """The pre-processed float model (the input itself when none applied or it failed parity)."""

    path: Path
    #: it went through the transformer optimizer (contrib ops)
    fused: bool
    analysis: ModelAnalysis


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ONNX Runtime is asked to quantize: the float model, its candidates, those kept float
    (in the order decided), the op types and the kernel options."""

    input_path: Path
    source: Path
    mode: str
    objective: str
    candidates: Mapping[str, Candidate]
    excluded: Mapping[str, ExcludedNode]
    op_types: tuple[str, ...]
    reduce_range: bool
    activation_type: str
    fused: bool
    large: bool
    present_ops: frozenset[str]
    #: static mode: QAT's trained ``(tensor, lo, hi)`` ranges that replace calibration's (``ranges.py``)
    activation_ranges: tuple[tuple[str, float, float], ...] = ()

    def active(self) -> list[Candidate]:
        """The candidates not kept float."""
        return [c for c in self.candidates.values() if c.name not in self.excluded]

    def excluding(self, nodes: Iterable[tuple[str, str, str, float | None]]) -> Plan:
        """This plan with ``(name, reason, detail, sensitivity)`` nodes kept float too."""
        excluded = dict(self.excluded)
        for name, reason, detail, sensitivity in nodes:
            c = self.candidates[name]
            excluded[name] = ExcludedNode(name, c.op_type, reason, detail, sensitivity, c.weight_bytes)
        return dataclasses.replace(self, excluded=excluded)

    def config(self, settings: QuantizeSettings, *, op_types: Iterable[str] | None = None,
               exclude: Iterable[str] | None = None, only: tuple[str, ...] = ()) -> QuantConfig:
        """One call of ONNX Runtime's quantizer for this plan (or with other op types / exclusions)."""
        s = settings
        op_types = list(self.op_types if op_types is None else op_types)
        excluded = set(self.excluded if exclude is None else exclude)
        if self.mode == "fp16" and s.auto_op_types:
            op_types = []  # fp16 converts every op ONNX Runtime's converter allows, not only weight ops
        else:
            # every candidate of an op type not quantized is excluded explicitly (see backend.QuantConfig)
            excluded |= {c.name for c in self.candidates.values() if c.op_type not in op_types}
        return QuantConfig(
            mode=self.mode,
            op_types=tuple(op_types),
            exclude=tuple(sorted(excluded)),
            only=only,
            per_channel=s.per_channel,
            reduce_range=self.reduce_range,
            activation_type=self.activation_type,
            weight_type=s.weight_type,
            format=s.format,
            calibration_method=s.calibration_method,
            block_size=s.block_size,
            symmetric=s.symmetric,
            fused=self.fused,
            large=self.large,
            all_candidates=tuple(self.candidates),
            activation_ranges=self.activation_ranges,
            pack_attention=s.pack_attention,
            skip_padding=s.skip_padding,
        )

    def summary_of_excluded(self) -> str:
        counts = collections.Counter(node.reason for node in self.excluded.values())
        return ", ".join(f"{n} {reason}" for reason, n in counts.items())


@dataclasses.dataclass(frozen=True)
class Smoothed:
    """The plan to quantize (its source smoothed when that scored best) and, when the strengths
    were scored, the quantized model of the choice."""

    plan: Plan
    quantized: Quantized | None


@dataclasses.dataclass(frozen=True)
class Quantized:
    """A quantized model and the plan that made it."""

    plan: Plan
    path: Path


@dataclasses.dataclass(frozen=True)
class Guarded:
    """The model the speed guard kept, its measured speed (None: not measured, see ``note``) and
    the inputs it was timed with."""

    quantized: Quantized
    speed: SpeedCheck | None
    feeds: Mapping[str, np.ndarray] | None
    note: str


@dataclasses.dataclass(frozen=True)
class Budgeted:
    """The model that keeps the accuracy budget, its score (None: no validation data), and whether
    nodes were kept float after the guard measured it."""

    quantized: Quantized
    score: Score | None
    changed: bool


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The model handed over, with its final speed."""

    quantized: Quantized
    score: Score | None
    speed: SpeedCheck | None
    speed_note: str


# ====================================================================== helpers
def _name_nodes(model: ir.Model) -> int:
    """Give every node a unique name, subgraphs included (in place, on the pass's copy)."""
    seen: set[str] = set()
    renamed = 0
    counts: collections.Counter[str] = collections.Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        name = node.name or ""
        if not name or name in seen:
            counts[node.op_type] += 1
            candidate = f"{node.op_type}_{counts[node.op_type]}"
            while candidate in seen:
                counts[node.op_type] += 1
                candidate = f"{node.op_type}_{counts[node.op_type]}"
            node.name = candidate
            renamed += 1
        seen.add(node.name)
    return renamed


def _load_proto(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def quantize(inputs: Inputs, plan: Plan, config: QuantConfig | None = None, *, stem: str = "quantized",
             source: Path | None = None) -> Quantized:
    """Quantize ``plan`` (or ``config``) with ONNX Runtime, from ``source`` (default: the plan's)."""
    dst = inputs.workspace.path(f"{stem}-{plan.mode}")
    path = quantize_file(source or plan.source, dst, config or plan.config(inputs.settings),
                         workspace=inputs.workspace, reader_factory=inputs.reader, present_ops=plan.present_ops)
    return Quantized(plan, path)


# ====================================================================== 1. prepare
def _check_data(inputs: Inputs) -> None:
    s = inputs.settings
    specs = inputs.specs
    if inputs.calibration is not None:
        inputs.calibration.check_against(specs, what="calibration data")
    if inputs.validation is not None:
        inputs.validation.check_against(specs, what="validation data")
        resolve_metric(s.metric, inputs.validation.labels is not None)  # top1 without labels -> DataError
    if s.max_drop is not None and inputs.validation is not None and inputs.calibration is not None \
            and same_data(inputs.calibration, inputs.validation):
        raise BudgetError("the validation data is the calibration data; a budget must be checked on "
                          "held-out data (pass a different validation=... / --val)")
    if s.max_drop is not None and inputs.validation is None:
        raise BudgetError("max_drop needs held-out validation data: pass validation=... (CLI: --val val.npz)")
    if s.analyze_sensitivity and inputs.validation is None:
        raise BudgetError("analyze_sensitivity needs validation data: pass validation=...")


def prepare(inputs: Inputs, journal: Journal) -> Prepared | Stop:
    """Check the data, write a copy of the model with unique node names to the workspace, refuse an
    already-quantized model and unknown exclusions, choose the mode and objective."""
    s = inputs.settings
    _check_data(inputs)
    work = CompressionPass.copy_model(inputs.model)
    renamed = _name_nodes(work)
    work.metadata_props.pop(RANGES_KEY, None)  # QAT's ranges are read from inputs.model, not carried on
    if renamed:
        journal.choices.append(Choice("node names", f"{renamed} named",
                                      "ONNX Runtime's quantizers address nodes by name; unnamed or duplicate "
                                      "nodes got OP_N names"))
    input_path = inputs.workspace.write(work, "input")
    del work
    first = analyze(_load_proto(input_path))
    if first.quantized_ops:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(first.quantized_ops.items()))
        if not {op.split("::")[-1] for op in first.quantized_ops} <= WEIGHT_ONLY_OP_TYPES:
            return Stop(f"the model is already quantized ({ops}); quantizing it again is refused", s.mode)
        journal.choices.append(Choice("already quantized", ops,
                                      "weight-only 4-bit nodes are left as they are; the float nodes "
                                      "around them can still be quantized"))
    unknown = [name for name in s.excluded_names if name not in first.node_names]
    if unknown:
        some = ", ".join(sorted(first.node_names)[:8])
        raise SettingError(f"exclude names node(s) not in the model: {unknown}; node names look like: {some}, ...")

    mode, choice = auto.choose_mode(s, first, inputs.calibration is not None)
    journal.note(choice)
    objective, choice = auto.choose_objective(s, mode)
    journal.note(choice)
    if mode == "fp16" and first.float_initializer_bytes == 0:
        return Stop("fp16: the model has no float32 weights to convert", mode)
    return Prepared(input_path, first, mode, objective)


# ====================================================================== 2. fuse (pre-process)
def _parity_problem(inputs: Inputs, reference: Path, path: Path) -> str | None:
    """Why the pre-processed ``path`` may not replace ``reference`` (its outputs differ), or None."""
    feeds, _ = benchmark_feeds(inputs.specs, [inputs.validation, inputs.calibration], 4)
    if feeds is None:
        return None  # cannot check without data of a known shape; ONNX Runtime's tools are trusted
    try:
        expected = Runner(reference, inputs.session).run(feeds)
        got = Runner(path, inputs.session).run(feeds)
    except Exception as exc:
        return f"the pre-processed model does not run ({type(exc).__name__})"
    for e, g in zip(expected, got):
        e = np.asarray(e, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        if e.shape != g.shape:
            return f"it changed an output shape {e.shape} -> {g.shape}"
        scale = max(float(np.max(np.abs(e))) if e.size else 0.0, 1e-6)
        diff = float(np.max(np.abs(e - g))) if e.size else 0.0
        if diff > _PREPROCESS_TOLERANCE * scale:
            return f"it changed the outputs (max difference {diff:.3g}, {diff / scale:.2g} of the output range)"
    return None


def fuse(inputs: Inputs, journal: Journal, prepared: Prepared) -> Fused:
    """Pre-process as ``auto.choose_preprocess`` says (ONNX Runtime's pre-processing, or the
    transformer fusions then ORT's transformer optimizer), kept only if the outputs are unchanged
    and no excluded node was fused away."""
    s = inputs.settings
    kind, choice = auto.choose_preprocess(s, prepared.mode, prepared.analysis)
    if kind == "none":
        journal.note(choice)
        return Fused(prepared.input_path, False, prepared.analysis)
    dst = inputs.workspace.path(f"prep-{kind}")
    try:
        if kind == "ort":
            preprocess_ort(prepared.input_path, dst)
        else:
            # fp16 is for GPUs, where ONNX Runtime's fused skip-LayerNorm kernel is the one to keep
            norms_form = "fused" if prepared.mode == "fp16" else "auto"
            fused, norms = preprocess_transformer(prepared.input_path, dst, threads=s.threads, layer_norm=norms_form)
            if choice is not None:
                choice.reason += f" (fused: {', '.join(f'{op} x{n}' for op, n in fused.items()) or 'nothing'}"
                choice.reason += f"; {norms})" if norms else ")"
    except Exception as exc:  # ONNX Runtime's tools raise anything: fall back, say why
        journal.choices.append(Choice("preprocess", "none", f"{kind} pre-processing failed "
                                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                                      "quantizing the model as it is"))
        return Fused(prepared.input_path, False, prepared.analysis)
    problem = _parity_problem(inputs, prepared.input_path, dst)
    analysis = analyze(_load_proto(dst)) if problem is None else None
    if analysis is not None:
        lost = [name for name in s.excluded_names if name not in analysis.node_names]
        if lost:
            problem = f"it fused away excluded node(s) {lost}"
    if problem is not None or analysis is None:
        journal.choices.append(Choice("preprocess", "none", f"{kind} pre-processing skipped: {problem}"))
        cleanup([dst])
        return Fused(prepared.input_path, False, prepared.analysis)
    journal.note(choice)
    return Fused(dst, kind == "transformer", analysis)


# ====================================================================== 3. select
def _nothing_quantizable(mode: str, first: ModelAnalysis, prepared: ModelAnalysis) -> str:
    kinds = {
        "static": "Conv/ConvTranspose/Gemm/MatMul",
        "dynamic": "Conv/MatMul/Gemm/Gather/Attention/LSTM",
        "weight_only": "MatMul/Gemm (or Gather)",
        "fp16": "float32",
    }[mode]
    text = (f"{mode} quantization needs {kinds} nodes with float32 weight initializers; "
            f"this model has none (ops: {first.describe_ops()})")
    if mode == "weight_only":
        text = (f"weight_only (4-bit MatMulNBits) quantizes MatMul/Gemm weights; this model has no MatMul or "
                f"Gemm with a constant weight (ops: {first.describe_ops()})")
    left_out = prepared.ineligible.get(mode, [])
    if left_out:
        text += f"; left out: {'; '.join(left_out[:5])}"
    return text


def select(inputs: Inputs, journal: Journal, prepared: Prepared, fused: Fused) -> Plan | Stop:
    """The candidates of the mode in the pre-processed model, those kept float (named by the user,
    of an op type not chosen, too small), the op types and kernel options."""
    s = inputs.settings
    mode = prepared.mode
    analysis = fused.analysis
    candidates = analysis.candidates[mode]
    if not candidates:
        return Stop(_nothing_quantizable(mode, prepared.analysis, analysis), mode)
    by_name = {c.name: c for c in candidates}

    op_types, warnings = auto.choose_op_types(s, mode, analysis)
    if not op_types and not s.auto_op_types:
        return Stop(f"the model has no {mode} candidate of op_types {', '.join(s.op_types)}", mode)  # type: ignore[arg-type]
    journal.warnings.extend(warnings)
    excluded: list[tuple[str, str, str, float | None]] = []
    for name in s.excluded_names:
        if name in by_name:
            excluded.append((name, "user", "named in exclude", None))
        else:
            journal.warnings.append(f"exclude: node {name} is not a {mode} candidate (nothing to keep float)")
    named = {name for name, *_ in excluded}
    excluded += [(c.name, "op type dropped", "op type not selected", None) for c in candidates
                 if c.op_type not in op_types and c.name not in named]
    min_weights, choice = auto.choose_min_weight_elements(s, mode)
    journal.note(choice)
    named = {name for name, *_ in excluded}
    excluded += [(c.name, "too small", f"{c.weight_elements} weights < {min_weights}", None) for c in candidates
                 if c.name not in named and c.weight_elements < min_weights and mode != "fp16"]
    plan = Plan(input_path=prepared.input_path, source=fused.path, mode=mode, objective=prepared.objective,
                candidates=by_name, excluded={}, op_types=(), reduce_range=False, activation_type="",
                fused=fused.fused, large=False,
                present_ops=frozenset(op.split("::")[-1] for op in analysis.op_counts)).excluding(excluded)
    if not plan.active():
        return Stop(f"all {len(candidates)} {mode} candidates are kept float ({plan.summary_of_excluded()}); "
                    "nothing left to quantize", mode)

    reduce_range, choice = auto.choose_reduce_range(s, mode, inputs.cpu)
    journal.note(choice)
    activation_type, choice = auto.choose_activation_type(s, mode, inputs.cpu)
    journal.note(choice)
    activation_ranges, choice = trained_ranges(inputs.model, mode)  # QAT's ranges (ranges.py)
    journal.note(choice)
    large = is_large(fused.path)
    if large:
        journal.choices.append(Choice("external data", True, "weights over 1.8 GB: ONNX Runtime's tools are "
                                      "called with use_external_data_format"))
    active = plan.active()
    return dataclasses.replace(plan, reduce_range=reduce_range, activation_type=activation_type, large=large,
                               activation_ranges=activation_ranges,
                               op_types=tuple(op for op in op_types if any(c.op_type == op for c in active)))


# ====================================================================== 4. smooth
def _smooth_from(plan: Plan, source: Path) -> Plan:
    """``plan`` quantizing ``source``: its smoothed weights are new initializers, so the candidates
    are re-read (same node names, new weight names)."""
    fresh = {c.name: c for c in analyze(_load_proto(source)).candidates[plan.mode]}
    return dataclasses.replace(plan, source=source,
                               candidates={name: fresh.get(name, c) for name, c in plan.candidates.items()})


def smooth(inputs: Inputs, journal: Journal, plan: Plan, analysis: ModelAnalysis) -> Smoothed:
    """Replace the float model by its smoothed copy when that quantizes more accurately
    (``smooth.py``), at the strength that scores best on the validation data.

    When the strengths were scored, the quantized model of the choice comes with the plan (it is
    the model the next steps start from).
    """
    s = inputs.settings
    alphas, choice = auto.choose_smoothing(s, plan.mode, analysis, inputs.calibration is not None,
                                           inputs.validation is not None)
    journal.note(choice)
    if not alphas:
        return Smoothed(plan, None)
    assert inputs.calibration is not None
    ws = inputs.workspace
    prepared = ws.read(plan.source)
    groups = smoothing_groups(prepared, [c.name for c in plan.active()])
    if not groups:
        journal.choices.append(Choice("smooth", "off", "no quantized MatMul reads a computed input"))
        return Smoothed(plan, None)
    absmax = input_absmax(prepared, groups, inputs.calibration.take(s.calibration_samples),
                          batch_size=inputs.eval_batch(), settings=inputs.session)
    where = f"{len(groups)} MatMul inputs"
    if inputs.validation is None:  # an explicit strength without data to check it
        plan = _smooth_from(plan, ws.write(smooth_weights(prepared, groups, absmax, alphas[0]), "smoothed"))
        journal.choices.append(Choice("smooth", alphas[0], f"as set ({where})"))
        return Smoothed(plan, None)
    evaluator = inputs.evaluator(plan.input_path, inputs.validation)
    # per strength (None: plain int8): the smoothed float model and its quantized model
    smoothed: dict[float | None, Path] = {None: plan.source}
    quantized: dict[float | None, Path] = {None: quantize(inputs, plan, stem="smooth-plain").path}
    scores: dict[float | None, float] = {None: evaluator.evaluate(quantized[None]).drop}
    for alpha in tqdm(alphas, desc="smoothing", unit="strength", disable=not inputs.progress, leave=False):
        smoothed[alpha] = ws.write(smooth_weights(prepared, groups, absmax, alpha), f"smoothed-{alpha}")
        quantized[alpha] = quantize(inputs, plan, stem="smooth-trial", source=smoothed[alpha]).path
        scores[alpha] = evaluator.evaluate(quantized[alpha]).drop
    best = min(scores, key=lambda a: (scores[a], a is not None))
    tried = ", ".join(f"{'plain' if a is None else a}: {d:.4g}" for a, d in scores.items())
    cleanup([path for a, path in quantized.items() if a != best])
    cleanup([path for a, path in smoothed.items() if a is not None and a != best])
    if best is None:
        journal.choices.append(Choice("smooth", "off", f"no strength beat plain int8 ({where}; validation "
                                      f"{evaluator.metric_name} drop {tried})"))
    else:
        plan = _smooth_from(plan, smoothed[best])
        journal.choices.append(Choice("smooth", best, f"activation outliers moved into the weights of {where}; "
                                      f"validation {evaluator.metric_name} drop {tried}"))
    return Smoothed(plan, Quantized(plan, quantized[best]))


# ====================================================================== 6. speed guard
def _drop_mode(settings: QuantizeSettings, plan: Plan) -> bool:
    if settings.guard == "drop":
        return True
    return (settings.guard == "auto" and settings.auto_op_types and plan.mode in ("static", "dynamic")
            and plan.objective in ("latency", "balanced"))


def _acceptable(settings: QuantizeSettings, plan: Plan, path: Path, check: SpeedCheck) -> bool:
    """Whether the guard's search may stop at this result (``guard.acceptable``)."""
    objective = "latency" if settings.guard == "drop" and plan.objective == "size" else plan.objective
    return acceptable(objective, check, file_bytes(plan.input_path) / file_bytes(path),
                      threshold=settings.min_speedup)


def guard(inputs: Inputs, journal: Journal, first: Quantized) -> Guarded | Stop:
    """Benchmark the quantized model against the input (``guard.py``); when the objective does not
    accept it and the guard may drop op types, drop the ones whose removal helps most."""
    s = inputs.settings
    plan, path = first.plan, first.path
    if s.guard == "off":
        return Guarded(first, None, None, "not measured (guard off)")
    feeds, source = benchmark_feeds(inputs.specs, [inputs.validation, inputs.calibration], s.benchmark_batch)
    if feeds is None:
        journal.warnings.append(source)
        return Guarded(first, None, None, source)
    speed = measure_speed(plan.input_path, path, feeds, runs=s.benchmark_runs, threads=s.threads,
                          threshold=s.min_speedup)
    journal.speed_trials.append({"op_types": list(plan.op_types), "speedup": speed.speedup,
                                 "verdict": speed.verdict, "label": "first", "size_bytes": file_bytes(path)})
    if _acceptable(s, plan, path, speed) or not _drop_mode(s, plan):
        return Guarded(first, speed, feeds, "")

    def try_without(kept: list[str]) -> tuple[Path, SpeedCheck] | None:
        if not any(c.op_type in kept for c in plan.active()):
            return None
        candidate = quantize(inputs, plan, plan.config(s, op_types=kept), stem="guard").path
        return candidate, measure_speed(plan.input_path, candidate, feeds, runs=s.benchmark_runs,
                                        threads=s.threads, threshold=s.min_speedup, label="+".join(kept))

    outcome = drop_slow_op_types(list(plan.op_types), (path, speed), try_without,
                                 lambda p, check: _acceptable(s, plan, p, check))
    journal.speed_trials.extend(outcome.trials)
    if outcome.best is None:
        tried = ", ".join(f"{'+'.join(t['op_types'])}: {t['speedup']:.2f}x" for t in outcome.trials)
        label = {"static": "static int8", "dynamic": "dynamic int8", "weight_only": "4-bit weight-only",
                 "fp16": "fp16"}[plan.mode]
        smaller = file_bytes(plan.input_path) / file_bytes(path)
        return Stop(
            f"{label} made the model slower on this CPU ({speed.speedup:.2f}x with "
            f"{'+'.join(plan.op_types)}, {smaller:.2f}x smaller{'; ' + tried if tried else ''}); objective "
            f"{plan.objective} does not accept it; the input is returned unchanged "
            "(--objective size keeps the smaller, slower model)", plan.mode)
    for op, why in outcome.dropped.items():
        journal.choices.append(Choice("op_types", f"dropped {op}", why))
        plan = plan.excluding((c.name, "op type dropped", f"{op} made the model slower", None)
                              for c in plan.active() if c.op_type == op)
    plan = dataclasses.replace(plan, op_types=tuple(outcome.kept))
    journal.choices.append(Choice("op_types", "+".join(plan.op_types),
                                  f"measured on this CPU: {outcome.best[1].speedup:.2f}x the input's speed "
                                  f"({outcome.best[1].verdict})"))
    return Guarded(Quantized(plan, outcome.best[0]), outcome.best[1], feeds, "")


# ====================================================================== 7. accuracy budget (sensitivity)
def _sanity_warning(journal: Journal, measured: Score, metric: str) -> None:
    """Without a budget, still say so when the outputs are far from the input model's."""
    limits = {"cosine": 0.05, "top1": 5.0}  # 1 - mean cosine; accuracy points
    limit = limits.get(metric)
    if limit is not None and measured.drop > limit:
        journal.warnings.append(
            f"large accuracy loss on the validation data: {metric} drop {measured.drop:.4g} (no max_drop set; "
            "with max_drop, exclude='auto' keeps the most sensitive nodes float)"
        )


def _rank(inputs: Inputs, plan: Plan) -> list[NodeSensitivity]:
    """Each active node quantized alone, scored on ``sensitivity_samples`` validation samples."""
    s = inputs.settings
    assert inputs.validation is not None
    subset = inputs.validation.take(s.sensitivity_samples)
    evaluator = inputs.evaluator(plan.input_path, subset)
    active = plan.active()
    logger.info("sensitivity analysis of %d nodes on %d samples", len(active), len(subset))

    def quantize_only(name: str) -> Path:
        return quantize(inputs, plan, plan.config(s, only=(name,)), stem="sensitivity").path

    return rank_nodes(active, quantize_only, evaluator, progress=inputs.progress, on_done=lambda p: cleanup([p]))


def keep_budget(inputs: Inputs, journal: Journal, current: Quantized) -> Budgeted | Stop:
    """Validate on held-out data; over ``max_drop`` with ``exclude="auto"``, rank the nodes by
    sensitivity and keep the most sensitive float until the budget holds."""
    s = inputs.settings
    plan = current.plan
    if inputs.validation is None:
        return Budgeted(current, None, False)
    evaluator = inputs.evaluator(plan.input_path, inputs.validation)
    measured = evaluator.evaluate(current.path)
    bound = Budget(margin=s.budget_margin).bound(measured.drop, float(measured.details.get("stderr", 0.0)))
    over = s.max_drop is not None and bound > s.max_drop
    # what the budget was compared with, for the messages below: the raw drop alone can be a gain
    compared = f"drop {measured.drop:.4g} (bound {bound:.4g} with margin {s.budget_margin:g})"
    if s.analyze_sensitivity or (over and s.auto_exclude):
        with journal.timed("sensitivity ranking"):
            journal.ranking = _rank(inputs, plan)
    if s.max_drop is None:
        _sanity_warning(journal, measured, evaluator.metric_name)
    if not over:
        return Budgeted(current, measured, False)
    if not s.auto_exclude:
        journal.warnings.append(f"over budget: {evaluator.metric_name} {compared} > max_drop "
                                f"{s.max_drop:.4g} (exclude='auto' would keep the most sensitive nodes float)")
        return Budgeted(current, measured, False)

    def measure(excluded: list[str]) -> tuple[Path, Score]:
        candidate = quantize(inputs, plan, plan.config(s, exclude=[*plan.excluded, *excluded]), stem="budget").path
        return candidate, evaluator.evaluate(candidate)

    outcome = choose_exclusions(journal.ranking, measured.drop, float(s.max_drop), measure,  # type: ignore[arg-type]
                                margin=s.budget_margin)
    if not outcome.met:
        best = f"{outcome.score.drop:.4g}" if outcome.score is not None else "n/a"
        return Stop(
            f"no quantization of this model keeps {evaluator.metric_name} within max_drop {s.max_drop:.4g} "
            f"without keeping every node float (all quantized: drop {measured.drop:.4g} +- "
            f"{float(measured.details.get('stderr', 0.0)):.2g}; best tried: {best}; the budget holds when max(drop, 0) "
            f"+ {s.budget_margin:g} x standard error <= max_drop)", plan.mode)
    by_name = {node.name: node for node in journal.ranking}
    plan = plan.excluding(
        (name, "sensitivity", f"quantized alone: {evaluator.metric_name} drop {by_name[name].drop:.4g}, "
         f"output error {by_name[name].output_error:.3g}", by_name[name].drop) for name in outcome.excluded)
    journal.choices.append(Choice(
        "exclude", f"{len(outcome.excluded)} kept float (most accuracy recovered per weight)",
        f"all quantized: {compared} > max_drop {s.max_drop:.4g}; with them float: "
        f"{outcome.score.drop:.4g}"))  # type: ignore[union-attr]
    return Budgeted(Quantized(plan, outcome.path), outcome.score, True)  # type: ignore[arg-type]


# ====================================================================== 8. verdict
def verdict(inputs: Inputs, journal: Journal, guarded: Guarded, budgeted: Budgeted) -> Verdict | Stop:
    """Benchmark the final model again when the budget step changed it; hand it over (with a loud
    warning when slower) or, when the objective does not accept it, stop with every number measured
    (``latency``: not faster; ``balanced``: size gain below the square of the slowdown)."""
    s = inputs.settings
    plan, path = budgeted.quantized.plan, budgeted.quantized.path
    speed = guarded.speed
    if budgeted.changed and speed is not None and guarded.feeds is not None:
        with journal.timed("speed guard"):
            speed = measure_speed(plan.input_path, path, guarded.feeds, runs=s.benchmark_runs, threads=s.threads,
                                  threshold=s.min_speedup, label="final")
        journal.speed_trials.append({"op_types": list(plan.op_types), "excluded": len(plan.excluded),
                                     "speedup": speed.speedup, "verdict": speed.verdict, "label": "final",
                                     "size_bytes": file_bytes(path)})
    handed = Verdict(budgeted.quantized, budgeted.score, speed, guarded.note)
    size_ratio = file_bytes(plan.input_path) / file_bytes(path)
    if speed is None:
        if plan.objective == "latency" and s.guard != "off":
            journal.warnings.append(f"objective latency, but the speed was not measured ({guarded.note}); "
                                    "the result is handed over unverified")
        return handed
    measured = (f"{speed.speedup:.2f}x the input's speed ({speed.verdict}; batch {speed.batch}, blocks "
                f"{', '.join(f'{r:.2f}' for r in speed.block_speedups)}) and {size_ratio:.2f}x smaller")
    if s.guard in ("auto", "drop") and speed.verdict != "faster" and size_ratio < MIN_SIZE_RATIO:
        return Stop(f"the quantized model gains nothing: {measured} (the float weights that stayed hold "
                    "most of the bytes); the input is returned unchanged", plan.mode)
    if s.guard == "auto" and not acceptable(plan.objective, speed, size_ratio, threshold=s.min_speedup, final=True):
        float_nodes = [n for n in plan.excluded.values() if n.reason == "sensitivity"]
        why = (f"; {len(float_nodes)} of {len(plan.candidates)} nodes had to stay float for max_drop "
               f"{s.max_drop:.4g}" if float_nodes and s.max_drop is not None else "")
        tried = "; ".join(f"{t.get('label') or '+'.join(t.get('op_types', []))}: {t['speedup']:.2f}x "
                          f"{t['verdict']}" for t in journal.speed_trials)
        need = ("faster than the input" if plan.objective == "latency"
                else "whose size gain is at least the square of its loss in speed (size ratio x speedup^2 >= 1)")
        return Stop(f"objective {plan.objective} needs a result {need}; the best {plan.mode} model found "
                    f"runs {measured}{why} (guard trials: {tried}); the input is returned unchanged "
                    "(--objective size keeps the quantized model)", plan.mode)
    if speed.verdict != "faster":
        what = "SLOWER than" if speed.verdict == "slower" else "not measurably faster than"
        journal.warnings.append(
            f"the quantized model is {what} its input on this CPU: {measured}; kept for objective "
            f"{plan.objective}" + (" (the mode asked for is honoured; --objective latency|balanced trades size "
                                   "for speed)" if plan.objective == "size" else "")
        )
    return handed


# ====================================================================== 9. report
def report(inputs: Inputs, journal: Journal, handed: Verdict) -> QuantizeResult | Stop:
    """The result: the quantized model, the nodes quantized and kept float (with the candidates
    ONNX Runtime's quantizer left float), every choice, trial and warning."""
    plan, path = handed.quantized.plan, handed.quantized.path
    out_proto = _load_proto(path)
    float_weights = {t.name for t in out_proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    quantized = [c.name for c in plan.active() if c.weight not in float_weights]
    plan = plan.excluding((c.name, "left float by ONNX Runtime", "the quantizer did not convert this node", None)
                          for c in plan.active() if c.weight in float_weights)
    if not quantized:
        return Stop(f"ONNX Runtime's {plan.mode} quantizer converted none of the candidates", plan.mode)
    model = inputs.workspace.read(path)
    counts = collections.Counter(plan.candidates[name].op_type for name in quantized)
    packed = sum(node.op_type == "QAttention" for node in out_proto.graph.node)
    if packed and plan.mode == "dynamic" and inputs.settings.pack_attention:
        journal.choices.append(Choice("pack_attention", f"{packed} QAttention", (
            "each layer's Q/K/V MatMuls and MultiHeadAttention packed into one int8 QAttention (its "
            "attention bias proven to be the padding mask, or absent; attention_pack.py)")))
    from onnx_compress.passes.quantize.skip_padding import NODE_PREFIX
    from onnx_compress.runtime.metrics import MASK_INPUT

    gathers = sum(n.name.startswith(NODE_PREFIX) and n.op_type == "Gather" for n in out_proto.graph.node)
    if gathers and plan.mode == "dynamic" and inputs.settings.skip_padding:
        journal.choices.append(Choice("skip_padding", f"on ({MASK_INPUT})", (
            f"per-token layers run on the real tokens of {MASK_INPUT!r} only ({gathers} Gather nodes added to "
            "gather and restore rows): per-token outputs are 0 at padded positions, unchanged on real tokens "
            "(quantize/skip_padding.py)")))
    result = QuantizeResult(
        model=model,
        modified=True,
        mode=plan.mode,
        quantized=quantized,
        quantized_op_types=dict(counts),
        excluded=list(plan.excluded.values()),
        choices=journal.choices,
        sensitivity=journal.ranking,
        speed_trials=journal.speed_trials,
        speed=handed.speed,
        speed_note=handed.speed_note,
        accuracy=handed.score.as_dict() if handed.score is not None else None,
        max_drop=inputs.settings.max_drop,
        size_before=file_bytes(plan.input_path),
        size_after=file_bytes(path),
        weight_bytes_before=weights_nbytes(inputs.model),
        weight_bytes_after=weights_nbytes(model),
        warnings=journal.warnings,
        seconds=dict(journal.seconds),
    )
    logger.info("quantize: %s", result.summary())
    for warning in journal.warnings:
        logger.warning("quantize: %s", warning)
    return result
