"""The bridge: an ONNX graph as a trainable ``torch.nn.Module``, and the trained values written back.

:class:`GraphModule` executes an ``onnx_ir`` graph node by node with torch operations
(``ops.py``). The float32 initializers that are *weights* — the weight and bias inputs of
``Conv``, ``Gemm``, ``MatMul`` (an initializer operand), ``LayerNormalization`` /
``BatchNormalization`` (scale and bias; running statistics stay fixed) and a bias ``Add`` right
after a MatMul/Gemm/Conv — become ``nn.Parameter`` s keyed by the initializer's name; every
other initializer (embedding tables read by ``Gather``, shapes, masks, scalars) is a fixed
buffer. :meth:`GraphModule.write_back` returns a copy of the SAME graph (same nodes, same value
names, same initializer names and shapes) whose trainable initializers hold the trained values,
and :func:`check_parity` runs that copy in ONNX Runtime against the module.

Why our own interpreter rather than onnx2pytorch / onnx2torch
    Both import torchvision at import time, and PyPI's torchvision 0.28.0 (the release that pins
    torch 2.13.0) fails at ``import torchvision`` against the project's torch 2.13 CPU build
    ("operator torchvision::nms does not exist": its C++ operators do not register; checked
    2026-11-30). More important, a converter builds a *new* module tree whose parameter names are
    its own, so writing the trained values back into the same ONNX graph needs a name mapping
    that the converters do not promise; here the parameter IS the initializer, by name, so the
    write-back is exact by construction and the graph's structure can never change. The
    interpreter is ~600 lines of plain ONNX semantics and refuses, by node name and op type,
    what it does not execute (:class:`~onnx_compress.errors.UnsupportedModelError`) before any
    training starts.

Limits
    Graphs with control flow (``If``/``Loop``/``Scan``), quantized graphs (QDQ, integer
    MatMul/Conv: train before quantizing, or use QAT) and fused attention contrib ops are refused.
    Float16/bfloat16 weights stay fixed. Shape arithmetic runs eagerly on the data's shapes, so
    one module serves every batch size and sequence length the graph accepts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.errors import ParityError, UnsupportedModelError
from onnx_compress.optional import require

__all__ = ["GraphModule", "trainable_initializers", "unsupported_nodes", "check_parity"]

logger = logging.getLogger(__name__)

torch = require("torch", "recovery training")

from onnx_compress.training.ops import OPS, UnsupportedOp, op_key  # noqa: E402

#: op type -> input positions that are weights when they are float initializers
_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
    "LayerNormalization": (1, 2), "BatchNormalization": (1, 2),
    "com.microsoft::SkipLayerNormalization": (2, 3, 4), "com.microsoft::BiasGelu": (1,),
    "com.microsoft::FastGelu": (1,),
}
_LINEAR = ("Conv", "Gemm", "MatMul")


def _initializer(value: ir.Value | None, graph: ir.Graph) -> ir.Value | None:
    if value is None or value.name not in graph.initializers or graph.initializers[value.name] is not value:
        return None
    return value if value.const_value is not None else None


def trainable_initializers(model: ir.Model) -> list[str]:
    """Names of the float32 initializers that recovery trains (see the module docstring)."""
    graph = model.graph
    names: dict[str, None] = {}
    for node in graph:
        key = op_key(node)
        positions: Sequence[int] = _WEIGHT_INPUTS.get(key, ())
        if key in ("Add", "Sub") and len(node.inputs) == 2:
            for i, value in enumerate(node.inputs):
                other = node.inputs[1 - i]
                producer = other.producer() if other is not None else None
                if producer is not None and op_key(producer) in _LINEAR and _initializer(value, graph) is not None:
                    positions = (i,)
        for i in positions:
            value = node.inputs[i] if i < len(node.inputs) else None
            init = _initializer(value, graph)
            if init is not None and init.dtype == ir.DataType.FLOAT and init.shape is not None and len(init.shape) >= 1:
                names[str(init.name)] = None
    return list(names)


def unsupported_nodes(model: ir.Model) -> list[str]:
    """``"name (op)"`` of every node the bridge cannot execute (empty when it can run the graph)."""
    bad = []
    for node in model.graph:
        key = op_key(node)
        if key not in OPS:
            bad.append(f"{node.name or '(unnamed)'} ({key})")
    for function in model.functions.values():
        bad.append(f"function {function.name}")
    return bad


def _safe(name: str, index: int) -> str:
    return f"t{index}_" + re.sub(r"[^0-9A-Za-z_]", "_", name)[:60]


class GraphModule(torch.nn.Module):  # type: ignore[misc]
    """An ONNX graph executed with torch ops; its weight initializers are parameters.

    ``forward(**feeds)`` takes the graph inputs by name (tensors or numpy arrays) and returns a
    dict ``{output name: tensor}``; ``extra_outputs`` names intermediate values to return too
    (for intermediate matching).
    """

    def __init__(self, model: ir.Model, *, trainable: Sequence[str] | None = None,
                 extra_outputs: Sequence[str] = ()) -> None:
        super().__init__()
        bad = unsupported_nodes(model)
        if bad:
            shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
            raise UnsupportedModelError(
                f"recovery cannot train this graph: no torch form for {shown} (quantized, fused-attention "
                "and control-flow graphs are refused: recover before quantize/fuse)")
        self.model = model
        graph = model.graph
        names = list(trainable) if trainable is not None else trainable_initializers(model)
        self.trainable_names = names
        self.params = torch.nn.ParameterDict()
        self._keys: dict[str, str] = {}
        self._fixed: dict[str, str] = {}
        for index, (name, value) in enumerate(graph.initializers.items()):
            if value.const_value is None:
                continue
            key = _safe(name, index)
            array = np.array(value.const_value.numpy())
            tensor = torch.from_numpy(array.copy() if array.dtype != np.bool_ else array)
            if name in names:
                self.params[key] = torch.nn.Parameter(tensor.float())
                self._keys[name] = key
            else:
                self.register_buffer(key, tensor, persistent=False)
                self._fixed[name] = key
        missing = [n for n in names if n not in self._keys]
        if missing:
            raise UnsupportedModelError(f"trainable initializer(s) {missing[:5]} are not initializers of the graph")
        self.input_names = [str(v.name) for v in graph.inputs if v.name not in graph.initializers]
        self.output_names = [str(v.name) for v in graph.outputs]
        known = {str(v.name) for node in graph for v in node.outputs if v is not None}
        unknown = [n for n in extra_outputs if n not in known]
        if unknown:
            raise UnsupportedModelError(f"no value named {unknown} in the graph (intermediate outputs to match)")
        self.extra_outputs = list(extra_outputs)
        self._nodes = list(graph)
        # free each intermediate after its last use: the backward graph keeps what it needs
        last_use: dict[str, int] = {}
        for position, node in enumerate(self._nodes):
            for value in node.inputs:
                if value is not None:
                    last_use[str(value.name)] = position
        self._release = [[] for _ in self._nodes]
        keep = set(self.output_names) | set(self.extra_outputs) | set(self.input_names)
        for name, position in last_use.items():
            if name not in keep and name not in self._keys and name not in self._fixed:
                self._release[position].append(name)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def named_weights(self) -> dict[str, Any]:
        """``{initializer name: parameter}``."""
        return {name: self.params[key] for name, key in self._keys.items()}

    def forward(self, **feeds: Any) -> dict[str, Any]:
        device = next(iter(self.params.values())).device if len(self.params) else torch.device("cpu")
        env: dict[str, Any] = {}
        for name in self.input_names:
            if name not in feeds:
                raise KeyError(f"missing graph input {name!r}")
            value = feeds[name]
            env[name] = self._value(name, (torch.from_numpy(np.asarray(value)) if not isinstance(value, torch.Tensor)
                                           else value).to(device))
        for name, key in self._keys.items():
            env[name] = self._weight(name, self.params[key])
        for name, key in self._fixed.items():
            env[name] = getattr(self, key)
        for node, release in zip(self._nodes, self._release):
            inputs = [None if v is None or v.name == "" else env[str(v.name)] for v in node.inputs]
            try:
                result = OPS[op_key(node)](node, inputs)
            except UnsupportedOp as exc:
                raise UnsupportedModelError(f"recovery cannot run node {node.name!r} ({op_key(node)}): {exc}") from None
            outputs = result if isinstance(result, list) else [result]
            for value, tensor in zip(node.outputs, outputs):
                if value is not None and tensor is not None:
                    if node.op_type in ("Constant", "ConstantOfShape") and tensor.device != device and tensor.dim() > 0:
                        tensor = tensor.to(device)
                    env[str(value.name)] = self._value(str(value.name), tensor)
            for name in release:
                env.pop(name, None)
        return {name: env[name] for name in [*self.output_names, *self.extra_outputs]}

    # hooks for quantization-aware training (training/qat.py): how a weight is read, how a value is seen
    def _weight(self, name: str, tensor: Any) -> Any:
        return tensor

    def _value(self, name: str, tensor: Any) -> Any:
        return tensor

    def check_runs(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Run once without gradients; an attribute form the bridge does not execute is refused here."""
        with torch.no_grad():
            self(**feeds)

    def write_back(self) -> ir.Model:
        """A copy of the graph whose trainable initializers hold the current parameter values.

        The copy shares every other tensor with the source model (never mutated); nodes, value
        names, initializer names, shapes and dtypes are those of the source.
        """
        copy = self.model.clone()
        for name, key in self._keys.items():
            value = copy.graph.initializers[name]
            array = self.params[key].detach().cpu().numpy().astype(np.float32, copy=True)
            value.const_value = ir.Tensor(array, name=name)
        return copy


def check_parity(module: GraphModule, written: ir.Model, feeds: Mapping[str, np.ndarray], *,
                 tolerance: float = 1e-4) -> float:
    """Largest |module - ONNX Runtime(written)| over the outputs, relative to the output scale.

    Raises ParityError when it is above ``tolerance`` (relative to ``max(1, max |output|)``).
    """
    from onnx_compress.runtime.session import Runner

    runner = Runner(written)
    feeds = {name: feeds[name] for name in module.input_names}
    expected = dict(zip(runner.output_names, runner.run(feeds)))
    was_training = module.training
    module.eval()
    with torch.no_grad():
        got = module(**feeds)
    module.train(was_training)
    worst = 0.0
    for name in module.output_names:
        ref = np.asarray(expected[name], dtype=np.float64)
        mine = got[name].detach().cpu().numpy().astype(np.float64)
        scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        worst = max(worst, float(np.abs(ref - mine).max()) / scale if ref.size else 0.0)
    if worst > tolerance:
        raise ParityError(f"the written ONNX model differs from the trained module by {worst:.3g} "
                          f"(relative, > {tolerance:g}) in ONNX Runtime")
    return worst
