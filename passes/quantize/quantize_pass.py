"""The quantization pass: prepare, choose, quantize with ONNX Runtime, guard speed, keep the budget.

See the package docstring (``onnx_compress.passes.quantize``) for the maths and the limits.
:meth:`Quantize.call` runs the steps of ``steps.py`` top to bottom (:func:`run`), each a function
of what the step before it made:

1. ``prepare``: check the data against the model's inputs, write the pass's copy to a workspace
   (nodes without a unique name get one: ONNX Runtime's quantizers address nodes by name),
   refuse an already-quantized model, choose the mode and objective;
2. ``fuse``: pre-process (ONNX Runtime's pre-processing, or the transformer fusions and ORT's
   transformer optimizer), kept only when the outputs are unchanged;
3. ``select``: find the candidates, apply the user's exclusions and the small-layer rule, choose
   the op types and kernel options;
4. ``smooth``: transformer-like models in dynamic mode: smooth activation outliers into the weights
   (``smooth.py``), at the strength that scores best on the validation data;
5. ``quantize`` with ONNX Runtime (static: calibrate once, cached for every later re-quantization);
6. ``guard``: benchmark against the input; as the objective says (``size``: keep and warn,
   ``latency`` / ``balanced``: drop op types while the result is not acceptable, see ``guard.py``);
7. ``keep_budget``: validate on held-out data; over the budget with ``exclude="auto"``: rank the
   nodes by sensitivity and keep the most sensitive float until the budget holds;
8. ``verdict``: benchmark the final model again when step 7 changed it; a final result the
   objective does not accept (``latency``: not faster; ``balanced``: size gain below the square of
   the slowdown) is not handed over: the input comes back with the measured numbers;
9. ``report``.

A step that finds nothing worth doing returns a ``Stop``; the input then comes back unchanged
with the reason (``nothing_to_do``).
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from onnx_compress.passes.base import CompressionPass
from onnx_compress.passes.quantize.backend import Workspace
from onnx_compress.passes.quantize.result import QuantizeResult
from onnx_compress.passes.quantize.settings import QuantizeSettings
from onnx_compress.passes.quantize.steps import (
    Inputs,
    Journal,
    Stop,
    fuse,
    guard,
    keep_budget,
    prepare,
    quantize,
    report,
    select,
    smooth,
    verdict,
)
from onnx_compress.runtime.cpu import CpuFeatures, detect_cpu

__all__ = ["Quantize", "run"]

logger = logging.getLogger(__name__)


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
        cpu = self.cpu or detect_cpu()
        with Workspace() as workspace:
            inputs = Inputs(model, self.settings, self.calibration, self.validation, cpu, self.progress, workspace)
            return run(inputs)


def run(inputs: Inputs) -> QuantizeResult:
    """The steps in order; the first ``Stop`` ends the run with the input unchanged."""
    journal = Journal()
    prepared = prepare(inputs, journal)
    if isinstance(prepared, Stop):
        return _unchanged(inputs, journal, prepared)
    fused = fuse(inputs, journal, prepared)
    plan = select(inputs, journal, prepared, fused)
    if isinstance(plan, Stop):
        return _unchanged(inputs, journal, plan)
    with journal.timed("smooth + first quantization"):
        smoothed = smooth(inputs, journal, plan, fused.analysis)
        quantized = smoothed.quantized or quantize(inputs, smoothed.plan)
    with journal.timed("speed guard"):
        guarded = guard(inputs, journal, quantized)
    if isinstance(guarded, Stop):
        return _unchanged(inputs, journal, guarded)
    with journal.timed("accuracy budget (incl. sensitivity)"):
        budgeted = keep_budget(inputs, journal, guarded.quantized)
    if isinstance(budgeted, Stop):
        return _unchanged(inputs, journal, budgeted)
    handed = verdict(inputs, journal, guarded, budgeted)
    if isinstance(handed, Stop):
        return _unchanged(inputs, journal, handed)
    result = report(inputs, journal, handed)
    if isinstance(result, Stop):
        return _unchanged(inputs, journal, result)
    return result


def _unchanged(inputs: Inputs, journal: Journal, stop: Stop) -> QuantizeResult:
    """The "nothing to do" result: the input (a copy), the reason, what was decided and measured."""
    logger.warning("quantize: nothing to do: %s", stop.reason)
    for warning in journal.warnings:
        logger.warning("quantize: %s", warning)
    return QuantizeResult(
        model=CompressionPass.copy_model(inputs.model),
        modified=False,
        mode=stop.mode,
        nothing_to_do=stop.reason,
        choices=journal.choices,
        warnings=journal.warnings,
        speed_trials=journal.speed_trials,
        sensitivity=journal.ranking,
    )
