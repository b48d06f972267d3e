"""The quantization pass: prepare, choose, quantize with ONNX Runtime, guard speed, keep the budget.

See the package docstring (``onnx_compress.passes.quantize``) for the maths and the limits.
The steps of :meth:`Quantize.call`, in order:

1. check the data against the model's inputs, refuse an already-quantized model;
2. write the input to a workspace (nodes without a unique name get one: ONNX Runtime's
   quantizers address nodes by name), choose the mode, pre-process (checked for parity);
3. find the candidates, apply the user's exclusions and the small-layer rule;
4. transformer-like models in dynamic mode: smooth activation outliers into the weights
   (``smooth.py``), at the strength that scores best on the validation data;
   quantize with ONNX Runtime (static: calibrate once, cached for every later re-quantization);
5. speed guard: benchmark against the input; as the objective says (``size``: keep and warn,
   ``latency`` / ``balanced``: drop op types while the result is not acceptable, see ``guard.py``);
6. accuracy: validate on held-out data; over the budget with ``exclude="auto"``: rank the nodes
   by sensitivity and keep the most sensitive float until the budget holds;
7. benchmark the final model again when step 6 changed it; a final result the objective does not
   accept (``latency``: not faster; ``balanced``: size gain below the square of the slowdown) is not handed
   over: the input comes back with the measured numbers; then report.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from tqdm.auto import tqdm

from onnx_compress.data import input_specs, same_data
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
from onnx_compress.passes.quantize.smooth import input_absmax, smooth, smoothing_groups
from onnx_compress.runtime.cpu import CpuFeatures, detect_cpu
from onnx_compress.runtime.metrics import Score, resolve_metric
from onnx_compress.runtime.session import Runner, SessionSettings
from onnx_compress.runtime.validate import Evaluator

__all__ = ["Quantize"]

logger = logging.getLogger(__name__)

#: with guard 'auto'/'drop', a result that is not measurably faster must be at least this much smaller
MIN_SIZE_RATIO = 1.05

#: relative output difference above which a pre-processed model is rejected
_PREPROCESS_TOLERANCE = 1e-3


class Quantize(CompressionPass):
    """Quantize a model with ONNX Runtime's tools, choosing settings from the model and the CPU.

    ``Quantize(mode="static", calibration=calib, validation=val, max_drop=0.5)``; see
    :class:`QuantizeSettings` for every setting and the package docstring for the method.
    ``cpu`` overrides the detected CPU features (tests).
    """

    name = "quantize"
    Settings = QuantizeSettings
    settings: QuantizeSettings

    #: show tqdm progress bars (calibration, sensitivity analysis)
    progress: bool = True
    #: the CPU the choices are made for (None: read /proc/cpuinfo)
    cpu: CpuFeatures | None = None

    def call(self, model: ir.Model) -> QuantizeResult:
        with Workspace() as workspace:
            return _Run(self, model, workspace).execute()


class _Nothing(Exception):
    """Internal: end the run with a "nothing to do" result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


class _Run:
    """One call of the pass (state kept here rather than passed through every helper)."""

    def __init__(self, pass_: Quantize, model: ir.Model, workspace: Workspace) -> None:
        self.pass_ = pass_
        self.settings = pass_.settings
        self.model = model
        self.ws = workspace
        self.calibration = pass_.calibration
        self.validation = pass_.validation
        self.cpu = pass_.cpu or detect_cpu()
        self.choices: list[Choice] = []
        self.warnings: list[str] = []
        self.session = SessionSettings(provider="cpu", intra_op_threads=self.settings.threads)
        self.speed_trials: list[dict[str, Any]] = []
        self.ranking: list[NodeSensitivity] = []
        self.feeds: dict[str, np.ndarray] | None = None
        self._changed_since_guard = False
        self.speed_note = ""
        self.mode: str = self.settings.mode
        self.objective: str = self.settings.objective
        #: seconds per step (reported: where the time went)
        self.seconds: dict[str, float] = collections.defaultdict(float)

    # ------------------------------------------------------------------ entry
    def execute(self) -> QuantizeResult:
        try:
            return self._execute()
        except _Nothing as nothing:
            logger.warning("quantize: nothing to do: %s", nothing.reason)
            for warning in self.warnings:
                logger.warning("quantize: %s", warning)
            return QuantizeResult(
                model=self.pass_.copy_model(self.model),
                modified=False,
                mode=self.mode,
                nothing_to_do=nothing.reason,
                choices=self.choices,
                warnings=self.warnings,
                speed_trials=self.speed_trials,
                sensitivity=self.ranking,
            )

    def _execute(self) -> QuantizeResult:
        s = self.settings
        specs = input_specs(self.model)
        self._check_data(specs)

        work = self.pass_.copy_model(self.model)
        renamed = _name_nodes(work)
        work.metadata_props.pop(RANGES_KEY, None)  # QAT's ranges are read from self.model, not carried on
        if renamed:
            self.choices.append(Choice("node names", f"{renamed} named",
                                       "ONNX Runtime's quantizers address nodes by name; unnamed or duplicate "
                                       "nodes got OP_N names"))
        self.input_path = self.ws.write(work, "input")
        del work
        first = analyze(_load_proto(self.input_path))
        if first.quantized_ops:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(first.quantized_ops.items()))
            if not {op.split("::")[-1] for op in first.quantized_ops} <= WEIGHT_ONLY_OP_TYPES:
                raise _Nothing(f"the model is already quantized ({ops}); quantizing it again is refused")
            self.choices.append(Choice("already quantized", ops,
                                       "weight-only 4-bit nodes are left as they are; the float nodes "
                                       "around them can still be quantized"))
        unknown = [name for name in s.excluded_names if name not in first.node_names]
        if unknown:
            some = ", ".join(sorted(first.node_names)[:8])
            raise SettingError(f"exclude names node(s) not in the model: {unknown}; node names look like: {some}, ...")

        self.mode, choice = auto.choose_mode(s, first, self.calibration is not None)
        self._note(choice)
        self.objective, objective_choice = auto.choose_objective(s, self.mode)
        self._note(objective_choice)
        if self.mode == "fp16" and first.float_initializer_bytes == 0:
            raise _Nothing("fp16: the model has no float32 weights to convert")

        self.prepared_path, self.fused = self._preprocess(first, specs)
        self.analysis = analyze(_load_proto(self.prepared_path))
        self.present_ops = frozenset(op.split("::")[-1] for op in self.analysis.op_counts)
        candidates = self.analysis.candidates[self.mode]
        if not candidates:
            raise _Nothing(self._nothing_quantizable(first))
        self.candidates = {c.name: c for c in candidates}

        op_types, warnings = auto.choose_op_types(s, self.mode, self.analysis)
        if not op_types and not s.auto_op_types:
            raise _Nothing(f"the model has no {self.mode} candidate of op_types "
                           f"{', '.join(s.op_types)}")  # type: ignore[arg-type]
        self.warnings.extend(warnings)
        self.excluded: dict[str, ExcludedNode] = {}
        for name in s.excluded_names:
            if name in self.candidates:
                self._exclude(name, "user", "named in exclude")
            else:
                self.warnings.append(f"exclude: node {name} is not a {self.mode} candidate (nothing to keep float)")
        for c in candidates:
            if c.op_type not in op_types and c.name not in self.excluded:
                self._exclude(c.name, "op type dropped", "op type not selected")
        min_weights, choice = auto.choose_min_weight_elements(s, self.mode)
        self._note(choice)
        for c in candidates:
            if c.name not in self.excluded and c.weight_elements < min_weights and self.mode != "fp16":
                self._exclude(c.name, "too small", f"{c.weight_elements} weights < {min_weights}")
        if not self._active():
            raise _Nothing(f"all {len(candidates)} {self.mode} candidates are kept float "
                           f"({self._excluded_summary()}); nothing left to quantize")

        self.reduce_range, choice = auto.choose_reduce_range(s, self.mode, self.cpu)
        self._note(choice)
        self.activation_type, choice = auto.choose_activation_type(s, self.mode, self.cpu)
        self._note(choice)
        self.activation_ranges, choice = trained_ranges(self.model, self.mode)  # QAT's ranges (ranges.py)
        self._note(choice)
        self.large = is_large(self.prepared_path)
        if self.large:
            self.choices.append(Choice("external data", True, "weights over 1.8 GB: ONNX Runtime's tools are called "
                                       "with use_external_data_format"))

        self.op_types = [op for op in op_types if any(c.op_type == op for c in self._active())]
        started = time.perf_counter()
        path = self._smooth() or self._quantize(self._config())
        self.seconds["smooth + first quantization"] += time.perf_counter() - started
        started = time.perf_counter()
        path, speed = self._guard(path)
        self.seconds["speed guard"] += time.perf_counter() - started
        started = time.perf_counter()
        path, score = self._budget(path)
        self.seconds["accuracy budget (incl. sensitivity)"] += time.perf_counter() - started
        if self._changed_since_guard and speed is not None and self.feeds is not None:
            started = time.perf_counter()
            speed = measure_speed(self.input_path, path, self.feeds, runs=s.benchmark_runs, threads=s.threads,
                                  threshold=s.min_speedup, label="final")
            self.seconds["speed guard"] += time.perf_counter() - started
            self.speed_trials.append({"op_types": list(self.op_types), "excluded": len(self.excluded),
                                      "speedup": speed.speedup, "verdict": speed.verdict, "label": "final",
                                      "size_bytes": file_bytes(path)})
        size_ratio = file_bytes(self.input_path) / file_bytes(path)
        self._final_verdict(speed, size_ratio)
        return self._result(path, speed, score)

    def _final_verdict(self, speed: SpeedCheck | None, size_ratio: float) -> None:
        """Hand the result over, with a loud warning when slower, or end with the input (see
        ``acceptable``); every number measured is in the reason."""
        s = self.settings
        if speed is None:
            if self.objective == "latency" and s.guard != "off":
                self.warnings.append(f"objective latency, but the speed was not measured ({self.speed_note}); "
                                     "the result is handed over unverified")
            return
        measured = (f"{speed.speedup:.2f}x the input's speed ({speed.verdict}; batch {speed.batch}, blocks "
                    f"{', '.join(f'{r:.2f}' for r in speed.block_speedups)}) and {size_ratio:.2f}x smaller")
        if s.guard in ("auto", "drop") and speed.verdict != "faster" and size_ratio < MIN_SIZE_RATIO:
            raise _Nothing(f"the quantized model gains nothing: {measured} (the float weights that stayed hold "
                           "most of the bytes); the input is returned unchanged")
        if s.guard == "auto" and not acceptable(self.objective, speed, size_ratio, threshold=s.min_speedup,
                                                final=True):
            float_nodes = [n for n in self.excluded.values() if n.reason == "sensitivity"]
            why = (f"; {len(float_nodes)} of {len(self.candidates)} nodes had to stay float for max_drop "
                   f"{s.max_drop:.4g}" if float_nodes and s.max_drop is not None else "")
            tried = "; ".join(f"{t.get('label') or '+'.join(t.get('op_types', []))}: {t['speedup']:.2f}x "
                              f"{t['verdict']}" for t in self.speed_trials)
            need = ("faster than the input" if self.objective == "latency"
                    else "whose size gain is at least the square of its loss in speed (size ratio x speedup^2 >= 1)")
            raise _Nothing(f"objective {self.objective} needs a result {need}; the best {self.mode} model found "
                           f"runs {measured}{why} (guard trials: {tried}); the input is returned unchanged "
                           "(--objective size keeps the quantized model)")
        if speed.verdict != "faster":
            what = "SLOWER than" if speed.verdict == "slower" else "not measurably faster than"
            self.warnings.append(
                f"the quantized model is {what} its input on this CPU: {measured}; kept for objective "
                f"{self.objective}" + (" (the mode asked for is honoured; --objective latency|balanced trades size "
                                       "for speed)" if self.objective == "size" else "")
            )

    # ------------------------------------------------------------------ checks
    def _check_data(self, specs: list) -> None:
        s = self.settings
        if self.calibration is not None:
            self.calibration.check_against(specs, what="calibration data")
        if self.validation is not None:
            self.validation.check_against(specs, what="validation data")
            resolve_metric(s.metric, self.validation.labels is not None)  # top1 without labels -> DataError
        if s.max_drop is not None and self.validation is not None and self.calibration is not None \
                and same_data(self.calibration, self.validation):
            raise BudgetError("the validation data is the calibration data; a budget must be checked on "
                              "held-out data (pass a different validation=... / --val)")
        if s.max_drop is not None and self.validation is None:
            raise BudgetError("max_drop needs held-out validation data: pass validation=... (CLI: --val val.npz)")
        if s.analyze_sensitivity and self.validation is None:
            raise BudgetError("analyze_sensitivity needs validation data: pass validation=...")

    def _nothing_quantizable(self, first: ModelAnalysis) -> str:
        kinds = {
            "static": "Conv/ConvTranspose/Gemm/MatMul",
            "dynamic": "Conv/MatMul/Gemm/Gather/Attention/LSTM",
            "weight_only": "MatMul/Gemm (or Gather)",
            "fp16": "float32",
        }[self.mode]
        text = (f"{self.mode} quantization needs {kinds} nodes with float32 weight initializers; "
                f"this model has none (ops: {first.describe_ops()})")
        if self.mode == "weight_only":
            text = (f"weight_only (4-bit MatMulNBits) quantizes MatMul/Gemm weights; this model has no MatMul or "
                    f"Gemm with a constant weight (ops: {first.describe_ops()})")
        left_out = self.analysis.ineligible.get(self.mode, [])
        if left_out:
            text += f"; left out: {'; '.join(left_out[:5])}"
        return text

    # ------------------------------------------------------------------ bookkeeping
    def _note(self, choice: Choice | None) -> None:
        if choice is not None:
            self.choices.append(choice)

    def _exclude(self, name: str, reason: str, detail: str, sensitivity: float | None = None) -> None:
        c = self.candidates[name]
        self.excluded[name] = ExcludedNode(name, c.op_type, reason, detail, sensitivity, c.weight_bytes)

    def _active(self) -> list[Candidate]:
        return [c for c in self.candidates.values() if c.name not in self.excluded]

    def _excluded_summary(self) -> str:
        counts = collections.Counter(node.reason for node in self.excluded.values())
        return ", ".join(f"{n} {reason}" for reason, n in counts.items())

    # ------------------------------------------------------------------ pre-processing
    def _parity_feeds(self, specs: list) -> dict[str, np.ndarray] | None:
        feeds, _ = benchmark_feeds(specs, [self.validation, self.calibration], 4)
        return feeds

    def _preprocess(self, first: ModelAnalysis, specs: list) -> tuple[Path, bool]:
        kind, choice = auto.choose_preprocess(self.settings, self.mode, first)
        if kind == "none":
            self._note(choice)
            return self.input_path, False
        dst = self.ws.path(f"prep-{kind}")
        try:
            if kind == "ort":
                preprocess_ort(self.input_path, dst)
            else:
                # fp16 is for GPUs, where ONNX Runtime's fused skip-LayerNorm kernel is the one to keep
                norms_form = "fused" if self.mode == "fp16" else "auto"
                fused, norms = preprocess_transformer(self.input_path, dst, threads=self.settings.threads,
                                                      layer_norm=norms_form)
                if choice is not None:
                    choice.reason += f" (fused: {', '.join(f'{op} x{n}' for op, n in fused.items()) or 'nothing'}"
                    choice.reason += f"; {norms})" if norms else ")"
        except Exception as exc:  # ONNX Runtime's tools raise anything: fall back, say why
            self.choices.append(Choice("preprocess", "none", f"{kind} pre-processing failed "
                                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                                       "quantizing the model as it is"))
            return self.input_path, False
        problem = self._parity_problem(dst, specs)
        if problem is None:
            prepared = analyze(_load_proto(dst))
            lost = [name for name in self.settings.excluded_names if name not in prepared.node_names]
            if lost:
                problem = f"it fused away excluded node(s) {lost}"
        if problem is not None:
            self.choices.append(Choice("preprocess", "none", f"{kind} pre-processing skipped: {problem}"))
            cleanup([dst])
            return self.input_path, False
        self._note(choice)
        return dst, kind == "transformer"

    def _parity_problem(self, path: Path, specs: list) -> str | None:
        feeds = self._parity_feeds(specs)
        if feeds is None:
            return None  # cannot check without data of a known shape; ONNX Runtime's tools are trusted
        try:
            expected = Runner(self.input_path, self.session).run(feeds)
            got = Runner(path, self.session).run(feeds)
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

    # ------------------------------------------------------------------ quantization
    def _config(self, *, op_types: list[str] | None = None, exclude: list[str] | None = None,
                only: tuple[str, ...] = ()) -> QuantConfig:
        s = self.settings
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
        )

    def _fixed_batch(self) -> int | None:
        """The model's batch size when its first input fixes it, else None."""
        specs = input_specs(self.model)
        if specs and specs[0].shape and isinstance(specs[0].shape[0], int) and specs[0].shape[0] > 0:
            return int(specs[0].shape[0])
        return None

    def _eval_batch(self) -> int:
        return self._fixed_batch() or 64

    def _reader(self) -> DatasetReader:
        s = self.settings
        assert self.calibration is not None  # static mode is refused without it
        data = self.calibration.take(s.calibration_samples)
        return DatasetReader(data, [spec.name for spec in input_specs(self.model)],
                             self._fixed_batch() or s.calibration_batch, progress=self.pass_.progress)

    def _quantize(self, config: QuantConfig, stem: str = "quantized", source: Path | None = None) -> Path:
        dst = self.ws.path(f"{stem}-{self.mode}")
        return quantize_file(source or self.prepared_path, dst, config, workspace=self.ws,
                             reader_factory=self._reader, present_ops=self.present_ops)

    # ------------------------------------------------------------------ smoothing
    def _use_prepared(self, path: Path) -> None:
        """Quantize ``path`` from now on; its smoothed weights are new initializers, so the
        candidates are re-read (same node names, new weight names)."""
        self.prepared_path = path
        self.analysis = analyze(_load_proto(path))
        fresh = {c.name: c for c in self.analysis.candidates[self.mode]}
        self.candidates = {name: fresh.get(name, c) for name, c in self.candidates.items()}

    def _smooth(self) -> Path | None:
        """Replace the prepared model by its smoothed copy when that quantizes more accurately.

        Returns the quantized model of the choice when the strengths were scored (it is the
        model the next steps start from), else None.
        """
        s = self.settings
        alphas, choice = auto.choose_smoothing(s, self.mode, self.analysis, self.calibration is not None,
                                               self.validation is not None)
        self._note(choice)
        if not alphas:
            return None
        assert self.calibration is not None
        prepared = self.ws.read(self.prepared_path)
        groups = smoothing_groups(prepared, [c.name for c in self._active()])
        if not groups:
            self.choices.append(Choice("smooth", "off", "no quantized MatMul reads a computed input"))
            return None
        absmax = input_absmax(prepared, groups, self.calibration.take(s.calibration_samples),
                              batch_size=self._eval_batch(), settings=self.session)
        where = f"{len(groups)} MatMul inputs"
        if self.validation is None:  # an explicit strength without data to check it
            self._use_prepared(self.ws.write(smooth(prepared, groups, absmax, alphas[0]), "smoothed"))
            self.choices.append(Choice("smooth", alphas[0], f"as set ({where})"))
            return None
        evaluator = Evaluator(self.input_path, self.validation, s.metric, batch_size=self._eval_batch(),
                              settings=self.session)
        # per strength (None: plain int8): the smoothed float model and its quantized model
        smoothed: dict[float | None, Path] = {None: self.prepared_path}
        quantized: dict[float | None, Path] = {None: self._quantize(self._config(), stem="smooth-plain")}
        scores: dict[float | None, float] = {None: evaluator.evaluate(quantized[None]).drop}
        for alpha in tqdm(alphas, desc="smoothing", unit="strength", disable=not self.pass_.progress, leave=False):
            smoothed[alpha] = self.ws.write(smooth(prepared, groups, absmax, alpha), f"smoothed-{alpha}")
            quantized[alpha] = self._quantize(self._config(), stem="smooth-trial", source=smoothed[alpha])
            scores[alpha] = evaluator.evaluate(quantized[alpha]).drop
        best = min(scores, key=lambda a: (scores[a], a is not None))
        tried = ", ".join(f"{'plain' if a is None else a}: {d:.4g}" for a, d in scores.items())
        cleanup([path for a, path in quantized.items() if a != best])
        cleanup([path for a, path in smoothed.items() if a is not None and a != best])
        if best is None:
            self.choices.append(Choice("smooth", "off", f"no strength beat plain int8 ({where}; validation "
                                       f"{evaluator.metric_name} drop {tried})"))
        else:
            self._use_prepared(smoothed[best])
            self.choices.append(Choice("smooth", best, f"activation outliers moved into the weights of {where}; "
                                       f"validation {evaluator.metric_name} drop {tried}"))
        return quantized[best]

    # ------------------------------------------------------------------ speed guard
    def _drop_mode(self) -> bool:
        s = self.settings
        if s.guard == "drop":
            return True
        return (s.guard == "auto" and s.auto_op_types and self.mode in ("static", "dynamic")
                and self.objective in ("latency", "balanced"))

    def _acceptable(self, path: Path, check: SpeedCheck) -> bool:
        """Whether the guard's search may stop at this result (``guard.acceptable``)."""
        objective = "latency" if self.settings.guard == "drop" and self.objective == "size" else self.objective
        return acceptable(objective, check, file_bytes(self.input_path) / file_bytes(path),
                          threshold=self.settings.min_speedup)

    def _guard(self, path: Path) -> tuple[Path, SpeedCheck | None]:
        s = self.settings
        if s.guard == "off":
            self.speed_note = "not measured (guard off)"
            return path, None
        feeds, source = benchmark_feeds(input_specs(self.model), [self.validation, self.calibration],
                                        s.benchmark_batch)
        self.feeds = feeds
        if feeds is None:
            self.speed_note = source
            self.warnings.append(source)
            return path, None
        speed = measure_speed(self.input_path, path, feeds, runs=s.benchmark_runs, threads=s.threads,
                              threshold=s.min_speedup)
        self.speed_trials.append({"op_types": list(self.op_types), "speedup": speed.speedup,
                                  "verdict": speed.verdict, "label": "first", "size_bytes": file_bytes(path)})
        if self._acceptable(path, speed) or not self._drop_mode():
            return path, speed

        def try_without(kept: list[str]) -> tuple[Path, SpeedCheck] | None:
            if not any(c.op_type in kept for c in self._active()):
                return None
            candidate = self._quantize(self._config(op_types=kept), stem="guard")
            return candidate, measure_speed(self.input_path, candidate, feeds, runs=s.benchmark_runs,
                                            threads=s.threads, threshold=s.min_speedup, label="+".join(kept))

        outcome = drop_slow_op_types(self.op_types, (path, speed), try_without, self._acceptable)
        self.speed_trials.extend(outcome.trials)
        if outcome.best is None:
            tried = ", ".join(f"{'+'.join(t['op_types'])}: {t['speedup']:.2f}x" for t in outcome.trials)
            label = {"static": "static int8", "dynamic": "dynamic int8", "weight_only": "4-bit weight-only",
                     "fp16": "fp16"}[self.mode]
            smaller = file_bytes(self.input_path) / file_bytes(path)
            raise _Nothing(
                f"{label} made the model slower on this CPU ({speed.speedup:.2f}x with "
                f"{'+'.join(self.op_types)}, {smaller:.2f}x smaller{'; ' + tried if tried else ''}); objective "
                f"{self.objective} does not accept it; the input is returned unchanged "
                "(--objective size keeps the smaller, slower model)"
            )
        for op, why in outcome.dropped.items():
            self.choices.append(Choice("op_types", f"dropped {op}", why))
            for c in self._active():
                if c.op_type == op:
                    self._exclude(c.name, "op type dropped", f"{op} made the model slower")
        self.op_types = outcome.kept
        self.choices.append(Choice("op_types", "+".join(self.op_types),
                                   f"measured on this CPU: {outcome.best[1].speedup:.2f}x the input's speed "
                                   f"({outcome.best[1].verdict})"))
        return outcome.best

    # ------------------------------------------------------------------ accuracy budget
    def _budget(self, path: Path) -> tuple[Path, Score | None]:
        s = self.settings
        if self.validation is None:
            return path, None
        evaluator = Evaluator(self.input_path, self.validation, s.metric, batch_size=self._eval_batch(),
                              settings=self.session)
        measured = evaluator.evaluate(path)
        over = s.max_drop is not None and measured.drop + s.budget_margin * float(
            measured.details.get("stderr", 0.0)) > s.max_drop
        want_ranking = s.analyze_sensitivity or (over and s.auto_exclude)
        if want_ranking:
            self.ranking = self._rank()
        if s.max_drop is None:
            self._sanity_warning(measured, evaluator.metric_name)
        if not over:
            return path, measured
        if not s.auto_exclude:
            self.warnings.append(f"over budget: {evaluator.metric_name} drop {measured.drop:.4g} > max_drop "
                                 f"{s.max_drop:.4g} (exclude='auto' would keep the most sensitive nodes float)")
            return path, measured

        def measure(excluded: list[str]) -> tuple[Path, Score]:
            candidate = self._quantize(self._config(exclude=[*self.excluded, *excluded]), stem="budget")
            return candidate, evaluator.evaluate(candidate)

        outcome = choose_exclusions(self.ranking, measured.drop, float(s.max_drop), measure,  # type: ignore[arg-type]
                                    margin=s.budget_margin)
        by_name = {node.name: node for node in self.ranking}
        if not outcome.met:
            best = f"{outcome.score.drop:.4g}" if outcome.score is not None else "n/a"
            raise _Nothing(
                f"no quantization of this model keeps {evaluator.metric_name} within max_drop {s.max_drop:.4g} "
                f"without keeping every node float (all quantized: drop {measured.drop:.4g} +- "
                f"{float(measured.details.get('stderr', 0.0)):.2g}; best tried: {best}; the budget holds when drop + "
                f"{s.budget_margin:g} x standard error <= max_drop)"
            )
        for name in outcome.excluded:
            node = by_name[name]
            self._exclude(name, "sensitivity", f"quantized alone: {evaluator.metric_name} drop {node.drop:.4g}, "
                          f"output error {node.output_error:.3g}", sensitivity=node.drop)
        self.choices.append(Choice(
            "exclude", f"{len(outcome.excluded)} kept float (most accuracy recovered per weight)",
            f"all quantized: drop {measured.drop:.4g} > max_drop {s.max_drop:.4g}; with them float: "
            f"{outcome.score.drop:.4g}"))  # type: ignore[union-attr]
        self._changed_since_guard = True
        return outcome.path, outcome.score  # type: ignore[return-value]

    def _sanity_warning(self, measured: Score, metric: str) -> None:
        """Without a budget, still say so when the outputs are far from the input model's."""
        limits = {"cosine": 0.05, "top1": 5.0}  # 1 - mean cosine; accuracy points
        limit = limits.get(metric)
        if limit is not None and measured.drop > limit:
            self.warnings.append(
                f"large accuracy loss on the validation data: {metric} drop {measured.drop:.4g} (no max_drop set; "
                "with max_drop, exclude='auto' keeps the most sensitive nodes float)"
            )

    def _rank(self) -> list[NodeSensitivity]:
        started = time.perf_counter()
        try:
            return self._rank_nodes()
        finally:
            self.seconds["sensitivity ranking"] += time.perf_counter() - started

    def _rank_nodes(self) -> list[NodeSensitivity]:
        s = self.settings
        assert self.validation is not None
        subset = self.validation.take(s.sensitivity_samples)
        evaluator = Evaluator(self.input_path, subset, s.metric, batch_size=self._eval_batch(),
                              settings=self.session)
        active = self._active()
        logger.info("sensitivity analysis of %d nodes on %d samples", len(active), len(subset))

        def quantize_only(name: str) -> Path:
            return self._quantize(self._config(only=(name,)), stem="sensitivity")

        return rank_nodes(active, quantize_only, evaluator, progress=self.pass_.progress,
                          on_done=lambda p: cleanup([p]))

    # ------------------------------------------------------------------ result
    def _result(self, path: Path, speed: SpeedCheck | None, score: Score | None) -> QuantizeResult:
        out_proto = _load_proto(path)
        float_weights = {t.name for t in out_proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
        quantized: list[str] = []
        for c in self._active():
            if c.weight in float_weights:
                self._exclude(c.name, "left float by ONNX Runtime", "the quantizer did not convert this node")
            else:
                quantized.append(c.name)
        if not quantized:
            raise _Nothing(f"ONNX Runtime's {self.mode} quantizer converted none of the candidates")
        model = self.ws.read(path)
        counts = collections.Counter(self.candidates[name].op_type for name in quantized)
        result = QuantizeResult(
            model=model,
            modified=True,
            mode=self.mode,
            quantized=quantized,
            quantized_op_types=dict(counts),
            excluded=list(self.excluded.values()),
            choices=self.choices,
            sensitivity=self.ranking,
            speed_trials=self.speed_trials,
            speed=speed,
            speed_note=self.speed_note,
            accuracy=score.as_dict() if score is not None else None,
            max_drop=self.settings.max_drop,
            size_before=file_bytes(self.input_path),
            size_after=file_bytes(path),
            weight_bytes_before=weights_nbytes(self.model),
            weight_bytes_after=weights_nbytes(model),
            warnings=self.warnings,
            seconds=dict(self.seconds),
        )
        logger.info("quantize: %s", result.summary())
        for warning in self.warnings:
            logger.warning("quantize: %s", warning)
        return result
