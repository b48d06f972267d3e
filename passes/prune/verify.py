"""Check a pruned model before handing it over: the ONNX checker, then ONNX Runtime.

:func:`check_pruned` runs ``onnx.checker.check_model(full_check=True)`` (which includes
strict shape inference) and then runs the model in ONNX Runtime on probe inputs, comparing
output names, dtypes and shapes with the original model's outputs on the same inputs. Probe
inputs come from the calibration data when there is some, else random inputs at batch 2
with every other symbolic dimension set to 8.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnx_compress.data import Dataset, input_specs, synthetic_inputs
from onnx_compress.errors import OnnxCompressError, one_line
from onnx_compress.model_io import check_model

__all__ = ["Probe", "make_probe", "check_pruned"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Probe:
    """Inputs and the original model's outputs on them (None when they could not be made)."""

    feeds: dict[str, np.ndarray] | None
    outputs: dict[str, np.ndarray] | None
    note: str = ""


def make_probe(model: ir.Model, calibration: Dataset | None) -> Probe:
    from onnx_compress.runtime.session import Runner, SessionSettings

    try:
        runner = Runner(model, SessionSettings(provider="cpu", intra_op_threads=1))
        if calibration is not None:
            data = calibration.take(2)
            feeds = {spec.name: data.inputs[spec.name] for spec in runner.input_specs if spec.name in data.inputs}
        else:
            names = {d for spec in input_specs(model) for d in (spec.shape or ()) if isinstance(d, str)}
            feeds = synthetic_inputs(input_specs(model), batch=2, dims={name: 8 for name in names})
        outputs = dict(zip(runner.output_names, runner.run(feeds)))
    except OnnxCompressError as exc:
        return Probe(None, None, f"ONNX Runtime check skipped: {one_line(exc)}")
    return Probe(feeds, outputs)


def check_pruned(model: ir.Model, probe: Probe) -> str | None:
    """Why ``model`` is not acceptable, or None when it passes both checks."""
    from onnx_compress.runtime.session import Runner, SessionSettings

    try:
        check_model(model, full_check=True)
    except Exception as exc:  # the checker raises ValidationError / InferenceError
        return f"onnx.checker: {one_line(exc)}"
    if probe.feeds is None or probe.outputs is None:
        return None
    try:
        runner = Runner(model, SessionSettings(provider="cpu", intra_op_threads=1))
        outputs = dict(zip(runner.output_names, runner.run(probe.feeds)))
    except OnnxCompressError as exc:
        return f"ONNX Runtime: {one_line(exc)}"
    if list(outputs) != list(probe.outputs):
        return f"outputs changed from {list(probe.outputs)} to {list(outputs)}"
    for name, expected in probe.outputs.items():
        got = outputs[name]
        if got.shape != expected.shape or got.dtype != expected.dtype:
            return f"output '{name}' changed from {expected.dtype}{list(expected.shape)} to {got.dtype}{list(got.shape)}"
    return None
