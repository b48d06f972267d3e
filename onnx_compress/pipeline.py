"""The compression pipeline: a recipe of passes under an accuracy budget, with a report.

:func:`compress` loads the model, normalizes it (constant folding, weight lifting, shape
inference: ``passes.Normalize``), then applies the recipe's passes in order. After every pass
the candidate is run on the validation data and scored against the *original* model:

- the drop holds the budget (with its margin for the validation split's size: ``budget.py``)
  -> the pass is **applied**;
- it does not, and the pass can be dialled down (``scaled``) -> the strength is bisected for the
  most aggressive setting that holds (**reduced**), or the pass is **rolled back** when none does;
- the pass refuses, fails, or produces a model ONNX Runtime cannot run -> **rolled back**, with
  the reason;
- the pass costs accuracy but saves less than ``min_gain`` (5 %) of parameters, weight bytes and
  MACs -> **rolled back**: the budget is left to the passes after it.

Passes that check the budget themselves (quantization's sensitivity-driven exclusions: a pass
whose settings are ``passes.base.BudgetAwareSettings``) get what is left of the budget and the metric.
Every pass gets the calibration data; the validation data is only used to check the budget
(and by passes that check it themselves), never to calibrate.

Finally every kept stage is measured: size, parameters, MACs, and ONNX Runtime latency of all
stages in ONE round-robin run, so the speed ratios against the original are side by side. A
final model slower than the original is reported as a warning, never silently.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnx_compress.budget import DEFAULT_MARGIN, Budget, bisect_strength, refine, resolution_note
from onnx_compress.data import DataSource, input_specs, load_data, same_data, synthetic_inputs
from onnx_compress.errors import BudgetError, OnnxCompressError, SettingError, one_line
from onnx_compress.model_io import load_model, model_files, save_model, weights_nbytes
from onnx_compress.passes.base import CompressionPass
from onnx_compress.passes.normalize import Normalize
from onnx_compress.rebalance import rebalance
from onnx_compress.recipe import Recipe, load_recipe
from onnx_compress.report import Report, StageReport, save_report
from onnx_compress.runtime.benchmark import compare_many
from onnx_compress.runtime.metrics import MetricSpec, Score, resolve_metric, score
from onnx_compress.runtime.session import Runner, SessionSettings
from onnx_compress.runtime.validate import Evaluator
from onnx_compress.setting import check_fields, setting
from onnx_compress.stats import count_macs, count_params, model_stats

__all__ = ["compress", "CompressionOutcome", "PipelineSettings"]

logger = logging.getLogger(__name__)

#: latency ratios within this fraction of 1.0 are reported as "no faster", not as a speed-up
_SPEED_NOISE = 0.05


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """How the pipeline measures (each field's help text is its declaration below)."""

    search_steps: int = setting(5, range=">= 1", help="the most trials of a pass's budget search, full strength included")
    bench_batch: int = setting(8, range=">= 1", help="samples per call when timing the stages")
    bench_runs: int = setting(50, range=">= 1", help="timed calls per stage, round-robin over all stages")
    min_gain: float = setting(0.05, range="[0, 1)", help="""
        a pass that costs accuracy must save at least this fraction of parameters, weight bytes
        or MACs, else it is rolled back: it would spend budget that later passes can use better""")
    session: SessionSettings = dataclasses.field(default_factory=SessionSettings)
    budget_margin: float = setting(DEFAULT_MARGIN, range=">= 0", metavar="Z", help="""
        standard errors of the measured drop added before it is compared with the budget, so that
        the budget holds on data the search never saw (1.41: one standard error of the drop on a
        fresh sample the size of the validation data; 0 = the raw drop; see onnx_compress.budget)""")
    objective: str | None = setting(None, kind="str", choices=("size", "latency", "balanced"), help="""
        what every quantize step pursues when int8 is smaller but slower on this CPU: replaces the
        objective of every quantize step of the recipe (default: each step's own; the presets
        small and cpu-int8: balanced, gpu-fp16: size)""")
    time_budget: float | None = setting(None, kind="float", range="> 0", metavar="SECONDS", help="""
        seconds for the whole run: each pass's budget search gets an even share of what is left; a
        search that would overrun its share keeps the best setting found so far (default:
        unbounded)""")
    real_tokens_only: bool = setting(True, cli=False, help="""
        per-token outputs of a model with an attention_mask input are compared on real tokens only
        (runtime.metrics); false: every position""")

    def __post_init__(self) -> None:
        try:
            check_fields(self)
        except SettingError as exc:
            raise BudgetError(str(exc)) from None


@dataclasses.dataclass
class CompressionOutcome:
    """The compressed model and the report that proves what it is."""

    model: ir.Model
    report: Report
    source: Path | None = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the compressed model atomically (refuses to overwrite the input model)."""
        protected = model_files(self.source) if self.source is not None else []
        return save_model(self.model, path, protected=protected)


@dataclasses.dataclass
class _Stage:
    report: StageReport
    model: ir.Model | None  # None when rolled back


def _symbolic_dims(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Sizes of named symbolic input axes (other than the batch) as the timing inputs have them."""
    dims: dict[str, int] = {}
    for spec in input_specs(model):
        for axis, dim in enumerate(spec.shape or ()):
            if axis > 0 and isinstance(dim, str) and spec.name in feeds:
                dims[dim] = int(feeds[spec.name].shape[axis])
    return dims


class _Pipeline:
    """One compression run (state kept here rather than in a chain of arguments)."""

    def __init__(self, model: ir.Model, evaluator: Evaluator | None, budget: Budget,
                 settings: PipelineSettings, drop: float = 0.0) -> None:
        self.evaluator = evaluator
        self.budget = budget
        self.settings = settings
        self.current = model
        self.drop = drop
        self.stderr = 0.0
        self.deadline = (time.perf_counter() + settings.time_budget) if settings.time_budget else None
        self.validation_seconds = 0.0

    def measure(self, candidate: ir.Model) -> Score | None:
        start = time.perf_counter()
        try:
            if self.evaluator is None:
                # no validation data: at least prove the model runs
                Runner(candidate, self.settings.session)
                return None
            return self.evaluator.evaluate(candidate)
        finally:
            self.validation_seconds += time.perf_counter() - start

    def run_pass(self, index: int, pass_: CompressionPass, passes_left: int = 1) -> _Stage:
        name = f"{index}. {pass_.name}"
        stage = StageReport(name=name, pass_name=pass_.name, decision="applied", settings=pass_.settings.as_dict())
        start = time.perf_counter()
        deadline = None if self.deadline is None else start + max(0.0, self.deadline - start) / max(1, passes_left)
        remaining = self.budget.remaining(self.drop, self.stderr)
        metric = self.evaluator.metric if self.evaluator is not None else "auto"
        pass_ = pass_.with_budget(remaining, metric, margin=self.budget.margin,  # only a BudgetAwareSettings
                                  objective=self.settings.objective)            # pass takes them
        stage.settings = pass_.settings.as_dict()

        def attempt(strength: float) -> tuple[tuple[ir.Model, Any], float] | None:
            configured = pass_ if strength == 1.0 else pass_.scaled(strength)
            if configured is None:
                return None
            result = configured(self.current)
            measured = self.measure(result.model)
            drop = measured.drop if measured is not None else 0.0
            stderr = float(measured.details.get("stderr", 0.0)) if measured is not None else 0.0
            logger.info("%s at strength %.3g: drop %.4g +- %.2g (%.1f s into the stage)", name, strength, drop, stderr,
                        time.perf_counter() - start)
            return (result, measured), drop, stderr

        def attempt_refined(full: tuple[str, ...]) -> tuple[tuple[ir.Model, Any], float, float] | None:
            configured = pass_.refined(outcome.strength, full)  # type: ignore[attr-defined]
            best_model = outcome.best[0].model  # type: ignore[index]
            preview = getattr(configured, "preview", None)  # a cut before its recovery training
            if preview is not None and _same_shape(preview(self.current), best_model):
                return None
            result = configured(self.current)
            if _same_shape(result.model, best_model):
                return None
            measured = self.measure(result.model)
            drop = measured.drop if measured is not None else 0.0
            stderr = float(measured.details.get("stderr", 0.0)) if measured is not None else 0.0
            logger.info("%s at strength %.3g, %s at full strength: drop %.4g +- %.2g (%.1f s into the stage)", name,
                        outcome.strength, ", ".join(full), drop, stderr, time.perf_counter() - start)
            return (result, measured), drop, stderr

        try:
            outcome = bisect_strength(attempt, self.budget, steps=self.settings.search_steps, deadline=deadline)
            if hasattr(pass_, "refined") and outcome.best is not None and 0 < outcome.strength < 1:
                outcome = refine(attempt_refined, pass_.refinement_keys(self.current), self.budget,  # type: ignore[attr-defined]
                                 outcome, steps=max(1, self.settings.search_steps - 1), deadline=deadline)
        except OnnxCompressError as exc:
            stage.decision, stage.reason = "rolled back", f"{type(exc).__name__}: {one_line(exc)}"
            stage.seconds = time.perf_counter() - start
            logger.warning("%s rolled back: %s", name, stage.reason)
            return _Stage(stage, None)
        except Exception as exc:  # a bug in a pass must not cost the user the whole run
            logger.debug("pass %s failed", name, exc_info=True)
            stage.decision = "rolled back"
            stage.reason = f"failed unexpectedly ({type(exc).__name__}: {one_line(exc)})"
            stage.seconds = time.perf_counter() - start
            logger.warning("%s rolled back: %s", name, stage.reason)
            return _Stage(stage, None)
        stage.trials = [dataclasses.asdict(t) for t in outcome.trials]
        stage.seconds = time.perf_counter() - start
        if outcome.best is None:
            stage.decision = "rolled back"
            worst = min((t.drop for t in outcome.trials), default=float("nan"))
            stage.reason = (
                f"no setting met the budget (smallest drop tried {worst:.4g} > {remaining:.4g} left)"
                if outcome.trials else "the pass could not be applied"
            )
            return _Stage(stage, None)
        result, measured = outcome.best
        if outcome.strength < 1.0:
            stage.decision, stage.strength = "reduced", outcome.strength
            stage.reason = f"full strength broke the budget; strength {outcome.strength:.3g} holds"
            if outcome.full:
                stage.reason += f" with {', '.join(outcome.full)} at full strength"
        else:
            stage.strength = 1.0
        stage.pass_result = result.as_dict()
        stage.pass_summary = result.summary()
        if measured is not None:
            stage.metric_value, stage.drop = measured.candidate, measured.drop
            stage.drop_stderr = float(measured.details.get("stderr", 0.0))
            stage.metric_details = dict(measured.details)
        if not result.modified:
            stage.decision = "no change"
            return _Stage(stage, self.current)  # the same model: measured once
        cost = (measured.drop - self.drop) if measured is not None else 0.0
        if cost > 1e-12:
            gain = _gain(self.current, result.model)
            if gain < self.settings.min_gain:
                stage.decision = "rolled back"
                stage.reason = (f"saves only {gain:.1%} of parameters, weight bytes and MACs for "
                                f"{cost:.4g} of the budget (drop {self.drop:.4g} before, {measured.drop:.4g} "
                                f"after; min_gain {self.settings.min_gain:.0%})")
                return _Stage(stage, None)
        if measured is not None:
            self.drop, self.stderr = measured.drop, stage.drop_stderr
        self.current = result.model
        return _Stage(stage, result.model)


def _note_time(stage: StageReport, validation_seconds: float) -> None:
    """Where a stage's time went: its budget-search trials, their validation, and the pass's own
    breakdown where it reports one (``seconds`` in its result: sensitivity, guard, ...)."""
    stage.timings = {"trials": len(stage.trials), "validation": validation_seconds}
    inner = stage.pass_result.get("seconds") if isinstance(stage.pass_result, dict) else None
    if isinstance(inner, dict):
        stage.timings.update({f"last trial: {k}": float(v) for k, v in inner.items()})


def _same_shape(a: ir.Model, b: ir.Model) -> bool:
    """Whether two cuts of one model kept the same parameters and MACs (a refinement that cut nothing more)."""
    return count_params(a) == count_params(b) and count_macs(a)[0] == count_macs(b)[0]


def _gain(before: ir.Model, after: ir.Model) -> float:
    """The largest relative reduction of parameters, weight bytes or MACs (batch 1)."""
    def fraction(old: float, new: float) -> float:
        return 1.0 - new / old if old > 0 else 0.0

    gains = [
        fraction(count_params(before), count_params(after)),
        fraction(weights_nbytes(before), weights_nbytes(after)),
    ]
    macs_before, unknown_before = count_macs(before)
    macs_after, unknown_after = count_macs(after)
    if not unknown_before and not unknown_after:
        gains.append(fraction(macs_before, macs_after))
    return max(gains)


def _group_recovery(steps: list[CompressionPass]) -> list[CompressionPass]:
    """A stage that recovers by training (``recover``) absorbs the cut passes right before it, so
    that their strength is searched with recovery in the loop (onnx_compress.training.stage)."""
    grouped: list[CompressionPass] = []
    for step in steps:
        absorbs = getattr(step, "absorbs", ())
        cuts: list[CompressionPass] = []
        while absorbs and grouped and grouped[-1].name in absorbs:
            cuts.insert(0, grouped.pop())
        grouped.append(step.absorb(cuts) if cuts else step)  # type: ignore[attr-defined]
    return grouped


def _slower_stage_warnings(kept: list[_Stage], batch: int) -> list[str]:
    """A kept stage measurably slower than the stage before it: the trade (smaller, slower) is
    the user's to judge, so it is said, with both numbers."""
    warnings = []
    for before, after in zip(kept, kept[1:]):
        if after.model is before.model or not before.report.speedup or not after.report.speedup:
            continue
        relative = after.report.speedup / before.report.speedup
        if relative < 1.0 - _SPEED_NOISE:
            smaller = before.report.size_bytes / after.report.size_bytes if after.report.size_bytes else 1.0
            warnings.append(f"stage {after.report.name} made the model {1 / relative:.2f}x SLOWER than the stage "
                            f"before it ({before.report.speedup:.2f}x -> {after.report.speedup:.2f}x of the "
                            f"original at batch {batch}) for {smaller:.2f}x smaller; a recipe without it is "
                            "faster")
    return warnings


def _environment(settings: PipelineSettings, providers: list[str]) -> dict[str, Any]:
    return {
        "onnxruntime": ort.__version__,
        "provider": providers[0] if providers else "",
        "intra_op_threads": settings.session.intra_op_threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "bench_batch": settings.bench_batch,
        "bench_runs": settings.bench_runs,
    }


def compress(
    model: ir.Model | str | os.PathLike[str],
    recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any],
    *,
    calib: DataSource | None = None,
    val: DataSource | None = None,
    metric: MetricSpec = "auto",
    max_drop: float | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    settings: PipelineSettings | None = None,
    train: DataSource | None = None,
) -> CompressionOutcome:
    """Compress ``model`` with ``recipe`` under "metric may drop by at most ``max_drop``".

    Args:
        model: an ONNX file or an ``onnx_ir.Model`` (never modified).
        recipe: a preset name, a YAML/JSON recipe file, a mapping, or a :class:`Recipe`.
        calib: calibration data (statistics for data-aware passes, quantization calibration).
        val: held-out validation data on which the budget is checked (required with a budget).
        metric: ``auto`` (top1 with labels, else cosine), ``top1``, ``cosine``, ``max_abs`` or a callable.
        max_drop: the budget in the metric's unit (points for top1); None = no budget.
        report_dir: where to write ``report.json`` and ``report.html`` (optional).
        settings: search and timing settings.
        train: training data for a ``recover`` stage (inputs; labels optional), kept apart from
            the calibration and validation data.

    Returns:
        The compressed model with its report; ``outcome.save(path)`` writes it.
    """
    settings = settings or PipelineSettings()
    run_start = time.perf_counter()
    budget = Budget(max_drop, settings.budget_margin)
    source = None if isinstance(model, ir.Model) else Path(model)
    original = model if isinstance(model, ir.Model) else load_model(model)
    plan = load_recipe(recipe)
    passes = plan.build()
    specs = input_specs(original)
    calibration = load_data(calib) if calib is not None else None
    validation = load_data(val) if val is not None else None
    if max_drop is not None and validation is None:
        raise BudgetError("a budget (max_drop) needs held-out validation data (val= / --val)")
    if calibration is not None:
        calibration.check_against(specs, what="calibration data")
    if validation is not None:
        validation.check_against(specs, what="validation data")
        if calibration is not None and same_data(calibration, validation):
            raise BudgetError("the validation data is the calibration data; the budget must be "
                              "checked on held-out data (use a different split)")
        resolve_metric(metric, validation.labels is not None)
    training = load_data(train) if train is not None else None
    if training is not None:
        training.check_against(specs, what="training data")
        if validation is not None and same_data(training, validation):
            raise BudgetError("the validation data is the training data; the budget must be checked on "
                              "held-out data (use a different split)")

    evaluator = Evaluator(original, validation, metric, settings=settings.session,
                          real_tokens_only=settings.real_tokens_only) if validation is not None else None
    metric_name = evaluator.metric_name if evaluator is not None else "none"
    pipeline = _Pipeline(original, evaluator, budget, settings)

    stages: list[_Stage] = [_Stage(StageReport(name="original", pass_name=None, decision="original"), original)]
    steps = list(passes)
    if not steps or not isinstance(steps[0], Normalize):
        steps.insert(0, Normalize())
    configured_steps: list[CompressionPass] = []
    steps = _group_recovery(steps)
    for index, pass_ in enumerate(steps, start=1):
        configured = pass_.with_data(calibration=calibration, validation=validation)
        if hasattr(configured, "with_teacher"):  # recovery training: the original is the teacher
            configured = configured.with_teacher(original, training)
            if index < len(steps) and steps[index].name == "quantize":  # qat: on simulates that step
                configured = configured.with_quantize(steps[index].settings, calibration is not None)
        configured_steps.append(configured)
        validation_before = pipeline.validation_seconds
        stage = pipeline.run_pass(index, configured, passes_left=len(steps) - index + 1)
        stages.append(stage)
        _note_time(stage.report, pipeline.validation_seconds - validation_before)
        logger.info("[%d/%d] %s: %s in %.1f s (%s; %.0f s elapsed)", index, len(steps), stage.report.pass_name,
                    stage.report.decision, stage.report.seconds,
                    ", ".join(f"{k} {v:.1f} s" if isinstance(v, float) else f"{k} {v}"
                              for k, v in stage.report.timings.items()), time.perf_counter() - run_start)
    rebalance_start = time.perf_counter()

    feeds_source = validation or calibration
    if feeds_source is not None:
        feeds = {spec.name: feeds_source.inputs[spec.name][: settings.bench_batch] for spec in specs}
    else:
        feeds = synthetic_inputs(specs, batch=settings.bench_batch)
    stages, alternatives = rebalance(  # a pass starved of budget by an earlier one: try the other order
        stages, configured_steps, lambda model, drop: _Pipeline(model, evaluator, budget, settings, drop=drop),
        lambda models: [lat.median_ms for lat in compare_many([Runner(m, settings.session) for m in models], feeds,
                                                              runs=settings.bench_runs, warmup=5)])
    rebalance_seconds = time.perf_counter() - rebalance_start
    timing_start = time.perf_counter()
    kept = [s for s in stages if s.model is not None]
    dims = _symbolic_dims(original, feeds)
    distinct: list[ir.Model] = []
    for stage in kept:
        if not any(stage.model is m for m in distinct):
            distinct.append(stage.model)  # type: ignore[arg-type]
    logger.info("timing %d models side by side", len(distinct))
    runners = [Runner(m, settings.session) for m in distinct]
    latencies = compare_many(runners, feeds, runs=settings.bench_runs, warmup=5)
    measurements = {id(m): (model_stats(m, dims=dims), latency) for m, latency in zip(distinct, latencies)}
    base_latency = latencies[0].median_ms
    for stage in kept:
        stats, latency = measurements[id(stage.model)]
        report = stage.report
        report.size_bytes, report.params, report.macs = stats.size_bytes, stats.params, stats.macs
        report.latency_median_ms, report.latency_p90_ms = latency.median_ms, latency.p90_ms
        report.speedup = base_latency / latency.median_ms
    timing_seconds = time.perf_counter() - timing_start
    logger.info("timed %d models side by side in %.1f s", len(distinct), timing_seconds)
    if evaluator is not None:
        reference = score(evaluator.metric, evaluator.reference_outputs, evaluator.reference_outputs,
                          evaluator.data.labels, token_mask=evaluator.token_mask)
        stages[0].report.metric_value, stages[0].report.drop = reference.reference, 0.0
        stages[0].report.drop_stderr = 0.0

    final = kept[-1].report
    warnings: list[str] = []
    if kept[-1].model is not original and final.speedup < 1.0 - _SPEED_NOISE:
        warnings.append(f"the compressed model is SLOWER than the original ({final.speedup:.2f}x) "
                        f"at batch {settings.bench_batch} on this machine")
    elif kept[-1].model is not original and final.speedup < 1.0 + _SPEED_NOISE:
        warnings.append(f"the compressed model is no faster than the original ({final.speedup:.2f}x, "
                        f"within the {_SPEED_NOISE:.0%} measurement noise) at batch {settings.bench_batch}")
    warnings.extend(_slower_stage_warnings(kept, settings.bench_batch))
    grain = resolution_note(metric_name, max_drop, len(validation) if validation is not None else 0, budget.margin)
    if grain:
        warnings.append(grain)
    if all(s.report.decision in ("rolled back", "no change") for s in stages[2:]) and len(stages) > 2:
        handed = "the normalized input model" if stages[1].model is not None else "the input model unchanged"
        warnings.append(f"no pass of the recipe could be applied within the budget; the output is {handed}")
    # the final model's own measured drop (NaN, never measured, does not hold)
    budget_met = budget.holds(final.drop, final.drop_stderr if final.drop_stderr == final.drop_stderr else 0.0) \
        if evaluator is not None else True
    report = Report(
        model=str(source) if source is not None else "(in-memory model)",
        recipe=plan.as_dict(),
        metric=metric_name,
        max_drop=max_drop,
        stages=[s.report for s in stages],
        budget_met=budget_met,
        warnings=warnings,
        environment=_environment(settings, runners[0].providers),
        budget_margin=settings.budget_margin,
        timings={"total": time.perf_counter() - run_start,
                 "passes (search trials, incl. their validation)": sum(st.report.seconds for st in stages),
                 "validation of candidates": pipeline.validation_seconds,
                 "timing the stages side by side": timing_seconds,
                 **({"re-balancing (other pass orders)": rebalance_seconds} if alternatives else {}),
                 **({"time budget": settings.time_budget} if settings.time_budget else {})},
        metric_scope=evaluator.scope if evaluator is not None else "",
        alternatives=[dataclasses.asdict(alt) for alt in alternatives],
    )
    for warning in warnings:
        logger.warning(warning)
    if report_dir is not None:
        save_report(report, report_dir)
    return CompressionOutcome(model=kept[-1].model, report=report, source=source)  # type: ignore[arg-type]
