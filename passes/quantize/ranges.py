"""Precomputed activation ranges (from quantization-aware training) for the static quantizer.

Recovery training with ``qat: on`` (``onnx_compress.training.qat``) learns the range
``[lo, hi]`` of every activation it fake-quantized and stores them in the model it writes, as
JSON in the metadata property :data:`METADATA_KEY` (``{tensor name: [lo, hi]}``), so that the
ranges travel with the model file (``onnx-compress recover --qat`` then ``onnx-compress
quantize``) as well as through the pipeline.

The static int8 quantizer hands them to ONNX Runtime's ``quantize_static`` as
``extra_options["TensorQuantOverrides"] = {name: [{"rmin": lo, "rmax": hi}]}``: ONNX Runtime
still calibrates every tensor it quantizes on the calibration data, and for the named tensors
computes scale and zero point from the given range instead (``QDQQuantizer.calc_quant_params``:
``scale = (max(hi, 0) - min(lo, 0)) / (qmax - qmin)``), so the int8 model uses the ranges it was
trained with.

Shared ranges
    ONNX Runtime gives the output of ``MaxPool``, ``Reshape``, ``Flatten``, ``Transpose``,
    ``Squeeze``, ``Unsqueeze``, ``AveragePool`` and ``Slice`` the quantization parameters of
    their input (``quantize_output_same_as_input``), and a ``Relu``/``Clip`` input those of its
    output (``adjust_tensor_ranges``; the activation is then removed). A range learned for the
    input of a Conv that reads ``MaxPool(Relu(x))`` is therefore also given to the tensors up that
    chain (:func:`shared_ranges`): max, reshapes and ``Relu`` commute with quantization, so the
    trained simulation and the written model agree. Names the model no longer has (a
    pre-processing step renamed them) are dropped with a log line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from onnx_compress.passes.quantize.result import Choice

__all__ = ["METADATA_KEY", "read_ranges", "write_ranges", "shared_ranges", "tensor_overrides", "trained_ranges"]

logger = logging.getLogger(__name__)

#: the metadata property that holds the ranges (JSON ``{tensor: [lo, hi]}``)
METADATA_KEY = "onnx_compress.activation_ranges"

#: ops whose output ONNX Runtime's QDQ quantizer quantizes with its input's parameters
SAME_AS_INPUT_OPS = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                               "AveragePool", "Slice"})
#: activations ONNX Runtime folds into the quantization of their input (input range := output range)
FOLDED_ACTIVATIONS = frozenset({"Relu", "Clip"})


def read_ranges(model: ir.Model) -> dict[str, tuple[float, float]]:
    """The ranges stored in ``model`` (empty when there are none)."""
    text = model.metadata_props.get(METADATA_KEY)
    if not text:
        return {}
    return {str(name): (float(lo), float(hi)) for name, (lo, hi) in json.loads(text).items()}


def write_ranges(model: ir.Model, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Store ``ranges`` in ``model``'s metadata (in place; the caller owns the model)."""
    model.metadata_props[METADATA_KEY] = json.dumps(
        {name: [float(lo), float(hi)] for name, (lo, hi) in sorted(ranges.items())})


def shared_ranges(graph: onnx.GraphProto, ranges: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """``ranges`` extended up the chains whose tensors share quantization parameters (see the
    module docstring), restricted to tensors of ``graph``."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    known = set(producers) | {v.name for v in graph.input}
    result: dict[str, tuple[float, float]] = {}
    for name, span in ranges.items():
        if name not in known:
            logger.info("activation range for %s dropped: no such tensor in the model", name)
            continue
        result[name] = span
        current = name
        while current in producers:
            node = producers[current]
            if node.op_type not in SAME_AS_INPUT_OPS | FOLDED_ACTIVATIONS or not node.input:
                break
            upstream = node.input[0]
            if consumers.get(upstream, 0) != 1 or upstream in ranges:
                break  # another reader or its own trained range: ONNX Runtime quantizes it on its own
            result.setdefault(upstream, span)
            current = upstream
    return result


def tensor_overrides(graph: onnx.GraphProto, ranges: Mapping[str, tuple[float, float]]) -> dict[str, list[dict]]:
    """ONNX Runtime's ``TensorQuantOverrides`` for ``ranges`` on ``graph``."""
    # numpy float32: ONNX Runtime's compute_scale_zp reads the dtype of rmin/rmax
    return {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
            for name, (lo, hi) in shared_ranges(graph, ranges).items()}


def trained_ranges(model: ir.Model, mode: str) -> tuple[tuple[tuple[str, float, float], ...], Choice | None]:
    """The quantize pass's view: ``((tensor, lo, hi), ...)`` to hand to ONNX Runtime, and the choice
    to report (None when the model holds no ranges). Only static mode has fixed activation ranges."""
    ranges = read_ranges(model)
    if not ranges:
        return (), None
    if mode != "static":
        return (), Choice("activation ranges", "not used", f"{len(ranges)} QAT ranges in the model; {mode} mode "
                          "has no fixed activation ranges")
    return tuple((name, lo, hi) for name, (lo, hi) in sorted(ranges.items())), Choice(
        "activation ranges", f"{len(ranges)} from QAT", "ranges learned by quantization-aware training replace "
        "calibration's for those tensors (and for the tensors ONNX Runtime quantizes with the same parameters)")
