"""Quantization-aware training (QAT): recovery with the int8 model's rounding in the loop.

With ``qat: on`` the student is trained as the int8 model the quantize pass will write:

- **which nodes**: the quantize pass's own analysis and choices decide
  (:func:`plan_qat`: ``passes.quantize.analysis.analyze`` candidates of the mode, the op types,
  the user's exclusions and the small-layer rule of ``passes.quantize.auto``, from the
  settings of the quantize step that follows ``recover``; static int8 with default settings
  when there is none). The speed guard's op-type drops and the sensitivity exclusions are
  measured later, on the int8 model, and cannot be known here: a node they keep float was
  trained quantized (a small, safe mismatch: its float weights are at least as accurate).
- **weights**: per output channel, symmetric int8 as ONNX Runtime writes them:
  ``s_c = max|w_c| / q`` (``q = 127``, 64 with ``reduce_range``), ``w -> s_c * round(w / s_c)``
  (Conv: axis 0, ConvTranspose: 1, Gemm: 0 with transB else 1, MatMul: the last axis).
- **activations** (the data input of each quantized node): static mode fake-quantizes with a
  range ``[lo, hi]`` observed as ONNX Runtime's MinMax calibration does on the first training
  batches, then tracked as an exponential moving average of each batch's min and max (momentum
  ``EMA_MOMENTUM``) while training and frozen for validation; ``s = (max(hi,0) - min(lo,0)) /
  (qmax - qmin)``, ``z = round(qmin - min(lo,0) / s)``, uint8 (0..255) or int8 (-128..127) as
  the pass chooses for this CPU. Dynamic mode quantizes each batch with its own uint8 range, as
  ``DynamicQuantizeLinear`` does at run time.
- **gradients**: straight-through (``torch.fake_quantize_per_channel_affine`` /
  ``fake_quantize_per_tensor_affine``): the rounding passes the gradient unchanged inside the
  range and zero outside it.

The model written back holds the trained float weights (parity is checked with the simulation
off) and, in static mode, the activation ranges of the best epoch in its metadata
(``passes/quantize/ranges.py``), which the quantize pass hands to ONNX Runtime in place of
calibration for those tensors: the int8 model is the one that was trained. Epoch 0 of the history
is the simulated int8 model with calibration ranges, i.e. post-training quantization.

Limits: biases stay float in training (ONNX Runtime stores them as int32 at the product of the
input and weight scales: a rounding far below the weights'); the outputs of quantized nodes are
not simulated (ONNX Runtime calibrates them, and a folded Relu or the pass-through ops that follow
take the range trained at the next node's input, see ``ranges.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx_ir as ir

from onnx_compress.errors import SettingError
from onnx_compress.optional import require
from onnx_compress.passes.quantize import auto
from onnx_compress.passes.quantize.analysis import analyze
from onnx_compress.passes.quantize.settings import QuantizeSettings
from onnx_compress.training.bridge import GraphModule

__all__ = ["QatPlan", "QatTarget", "plan_qat", "QatGraphModule", "qat_module", "finish_qat", "EMA_MOMENTUM"]

logger = logging.getLogger(__name__)

torch = require("torch", "quantization-aware training")

#: weight of each batch's min/max in the moving average of an activation range
EMA_MOMENTUM = 0.02
#: op types whose weights and data input QAT simulates (Gather tables, LSTM, Attention are not)
SIMULATED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class QatTarget:
    """The quantize step QAT simulates: its settings, and whether it gets calibration data
    (``mode: auto`` chooses static with calibration data)."""

    settings: QuantizeSettings = dataclasses.field(default_factory=lambda: QuantizeSettings(mode="static"))
    calibration: bool = True


@dataclasses.dataclass(frozen=True)
class QatPlan:
    """What QAT fake-quantizes (see the module docstring)."""

    mode: str  # static | dynamic
    nodes: tuple[str, ...]
    weights: Mapping[str, int]  # initializer -> channel axis
    activations: tuple[str, ...]  # data inputs of the quantized nodes
    weight_qmax: int
    act_qmin: int
    act_qmax: int
    skipped: tuple[str, ...] = ()  # "node: reason"

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "nodes": list(self.nodes), "weights": len(self.weights),
                "activations": list(self.activations), "weight_bits": "int8 per channel, symmetric, "
                f"+-{self.weight_qmax}", "activation_range": [self.act_qmin, self.act_qmax],
                "skipped": list(self.skipped)}


def _weight_axis(node: ir.Node, rank: int) -> int:
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = node.attributes.get("transB")
        return 0 if trans_b is not None and trans_b.as_int() else 1
    if node.op_type == "MatMul":
        return rank - 1
    return 0


def plan_qat(model: ir.Model, target: QatTarget | None = None, trainable: Iterable[str] | None = None) -> QatPlan:
    """The nodes, weights and activations the quantize step of ``target`` will make int8.

    Raises:
        SettingError: the target is not an int8 mode, or it leaves no node to quantize.
    """
    from onnx_compress.runtime.cpu import detect_cpu

    target = target or QatTarget()
    s = target.settings
    analysis = analyze(ir.serde.serialize_model(model))
    mode, _ = auto.choose_mode(s, analysis, target.calibration)
    if mode not in ("static", "dynamic"):
        raise SettingError(f"qat simulates int8 (static or dynamic quantization); the quantize step is {mode}")
    op_types, _ = auto.choose_op_types(s, mode, analysis)
    min_elements, _ = auto.choose_min_weight_elements(s, mode)
    cpu = detect_cpu()
    reduce_range, _ = auto.choose_reduce_range(s, mode, cpu)
    activation_type, _ = auto.choose_activation_type(s, mode, cpu)
    trainable_names = set(trainable) if trainable is not None else None
    # candidates name their node and weight; nodes are found by (op type, weight): names may be empty
    by_weight = {(node.op_type, value.name): node for node in model.graph for value in node.inputs[:2]
                 if value is not None}
    nodes, weights, activations, skipped = [], {}, [], []
    for candidate in analysis.candidates[mode]:
        why = ""
        if candidate.op_type not in op_types:
            why = "op type not quantized"
        elif candidate.name in s.excluded_names:
            why = "excluded"
        elif candidate.weight_elements < min_elements:
            why = f"{candidate.weight_elements} weights < {min_elements}"
        elif candidate.op_type not in SIMULATED_OPS:
            why = f"{candidate.op_type} is not simulated"
        elif (candidate.op_type, candidate.weight) not in by_weight:
            why = "not a main-graph node"
        elif trainable_names is not None and candidate.weight not in trainable_names:
            why = f"weight {candidate.weight} is not trained"
        if why:
            skipped.append(f"{candidate.name}: {why}")
            continue
        node = by_weight[(candidate.op_type, candidate.weight)]
        weight = model.graph.initializers[candidate.weight]
        rank = len(weight.shape) if weight.shape is not None else 2
        nodes.append(candidate.name)
        weights[candidate.weight] = _weight_axis(node, rank)
        data = node.inputs[0]
        if data is not None and data.name not in activations and data.name not in model.graph.initializers:
            activations.append(str(data.name))
    if not nodes:
        raise SettingError(f"qat: the {mode} quantize step leaves no node of this model to quantize "
                           f"({'; '.join(skipped[:4]) or 'no Conv/Gemm/MatMul with a weight'})")
    weight_qmax = 64 if reduce_range else 127
    act_qmin, act_qmax = (0, 255) if (mode == "dynamic" or activation_type == "uint8") else (-128, 127)
    return QatPlan(mode, tuple(nodes), weights, tuple(activations), weight_qmax, act_qmin, act_qmax, tuple(skipped))


def _affine(lo: Any, hi: Any, qmin: int, qmax: int) -> tuple[Any, Any]:
    """ONNX Runtime's ``compute_scale_zp`` (asymmetric): scale and zero point of ``[lo, hi]``."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = (hi - lo) / float(qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    return scale.float().reshape(1), zero.reshape(1)


class QatGraphModule(GraphModule):
    """The bridge's module with the weights and activations of ``plan`` fake-quantized.

    ``simulate`` (default True) turns the simulation on and off (off: the float graph, for the
    write-back parity check). ``ranges`` holds ``[lo, hi]`` per activation of the plan (static).
    """

    def __init__(self, model: ir.Model, plan: QatPlan, *, extra_outputs: Sequence[str] = ()) -> None:
        super().__init__(model, extra_outputs=extra_outputs)
        self.plan = plan
        self.simulate = True
        self.calibrating = False
        self._act_index = {name: i for i, name in enumerate(plan.activations)}
        self.register_buffer("ranges", torch.zeros(len(plan.activations), 2))
        self.register_buffer("observed", torch.zeros(len(plan.activations), dtype=torch.bool))

    # ---- the bridge's hooks
    def _weight(self, name: str, tensor: Any) -> Any:
        axis = self.plan.weights.get(name)
        if axis is None or not self.simulate or self.calibrating:
            return tensor
        q = self.plan.weight_qmax
        dims = [d for d in range(tensor.dim()) if d != axis]
        absmax = tensor.detach().abs().amax(dim=dims) if dims else tensor.detach().abs()
        scale = (absmax / q).clamp_min(1e-12).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(tensor, scale, zero, axis, -q, q)

    def _value(self, name: str, tensor: Any) -> Any:
        index = self._act_index.get(name)
        if index is None or not (self.simulate or self.calibrating) or not tensor.is_floating_point():
            return tensor
        plan = self.plan
        if plan.mode == "dynamic":
            lo, hi = tensor.detach().min(), tensor.detach().max()
        else:
            if self.calibrating or (self.training and not bool(self.observed[index])):
                self._observe(index, tensor, ema=False)
            elif self.training:
                self._observe(index, tensor, ema=True)
            if self.calibrating:
                return tensor
            lo, hi = self.ranges[index, 0], self.ranges[index, 1]
        scale, zero = _affine(lo, hi, plan.act_qmin, plan.act_qmax)
        return torch.fake_quantize_per_tensor_affine(tensor, scale, zero, plan.act_qmin, plan.act_qmax)

    def _observe(self, index: int, tensor: Any, *, ema: bool) -> None:
        with torch.no_grad():
            lo, hi = tensor.detach().min(), tensor.detach().max()
            if ema:
                self.ranges[index, 0] += EMA_MOMENTUM * (lo - self.ranges[index, 0])
                self.ranges[index, 1] += EMA_MOMENTUM * (hi - self.ranges[index, 1])
            elif bool(self.observed[index]):
                self.ranges[index, 0] = torch.minimum(self.ranges[index, 0], lo)
                self.ranges[index, 1] = torch.maximum(self.ranges[index, 1], hi)
            else:
                self.ranges[index, 0], self.ranges[index, 1] = lo, hi
                self.observed[index] = True

    # ---- around training
    def calibrate(self, batches: Iterable[Mapping[str, Any]]) -> None:
        """Initial ranges: min and max over ``batches`` (ONNX Runtime's MinMax calibration)."""
        if self.plan.mode != "static":
            return
        self.calibrating = True
        try:
            with torch.no_grad():
                for feeds in batches:
                    self(**feeds)
        finally:
            self.calibrating = False

    def activation_ranges(self) -> dict[str, tuple[float, float]]:
        """``{tensor: (lo, hi)}`` (static mode; empty in dynamic mode)."""
        if self.plan.mode != "static":
            return {}
        values = self.ranges.detach().cpu().tolist()
        return {name: (float(values[i][0]), float(values[i][1])) for name, i in self._act_index.items()
                if bool(self.observed[i])}

    def state(self) -> dict[str, Any]:
        """The trained state: parameters and ranges (for keeping the best epoch)."""
        return {"params": {k: p.detach().clone() for k, p in self.params.items()},
                "ranges": self.ranges.detach().clone(), "observed": self.observed.detach().clone()}


def qat_module(model: ir.Model, target: QatTarget | None, extra_outputs: Sequence[str], train: Any,
               batch_size: int, device: Any, calibration_samples: int = 512) -> QatGraphModule:
    """The QAT student for ``recover``: planned, on ``device``, its ranges calibrated on the first
    ``calibration_samples`` training samples."""
    from onnx_compress.training.bridge import trainable_initializers

    plan = plan_qat(model, target, trainable_initializers(model))
    module = QatGraphModule(model, plan, extra_outputs=extra_outputs).to(device)
    count = min(len(train), calibration_samples)
    names = module.input_names
    module.calibrate({n: train.inputs[n][s:min(s + batch_size, count)] for n in names}
                     for s in range(0, count, batch_size))
    logger.info("qat (%s): %d nodes int8 (%s), %d activation ranges", plan.mode, len(plan.nodes),
                ", ".join(plan.nodes[:6]) + (" ..." if len(plan.nodes) > 6 else ""), len(plan.activations))
    return module


def finish_qat(module: QatGraphModule, written: ir.Model, result: Any) -> None:
    """Store the learned ranges in the written model, and turn the simulation off so that the
    write-back parity check compares the float graph."""
    from onnx_compress.passes.quantize.ranges import write_ranges

    ranges = module.activation_ranges()
    if ranges:
        write_ranges(written, ranges)
    result.qat["ranges"] = {name: [lo, hi] for name, (lo, hi) in ranges.items()}
    module.simulate = False
