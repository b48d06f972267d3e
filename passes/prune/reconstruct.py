"""Reconstruction after structured pruning: re-fit each consumer layer on calibration data.

Cutting channels removes what they contributed to every layer that reads them. Without
fine-tuning the next layer's output drifts; reconstruction (He et al., 2017, "Channel pruning
for accelerating very deep neural networks"; Luo et al., 2017, ThiNet) re-fits the weights of
that layer so that its output in the pruned model matches the original model's output again.

Maths
    For a *consumer* node (a weighted op whose constant weight lost input channels) let

    - ``X`` (rows x K) be its input in the pruned model (after earlier reconstructions),
      flattened to rows: the leading axes of a MatMul input, the output positions of a Conv
      (im2col: row = one output position, columns = the ``C/group * prod(kernel)`` input values
      under the kernel, honouring strides, pads, dilations and ``auto_pad``);
    - ``Y`` (rows x N) be the same node's output in the ORIGINAL model, restricted to the
      output channels the pruned node kept (when its own output channels were cut too);
    - ``W0``, ``b0`` the pruned node's current weight (as a K x N matrix) and bias.

    The new weight and bias solve a ridge regression that shrinks towards ``W0`` (not towards
    zero), with an unregularized bias fitted jointly::

        W, b = argmin ||X W + 1 b - Y||^2 + lam ||W - W0||^2
        (Cxx + lam I) W = Cxy + lam W0,   b = mean(Y) - mean(X) W

    where ``Cxx``, ``Cxy`` are the centred ``X^T X`` and ``X^T Y`` and ``lam = ridge *
    trace(Cxx) / K``. Shrinking towards ``W0`` keeps the pruned weights in the directions the
    calibration data does not explore (a Gemm with 800 inputs fitted on 180 images), and a
    large ``ridge`` gives back the un-refit layer. Only ``X^T X``, ``X^T Y``, the column sums
    and ``sum Y^2`` are accumulated (float64), one ONNX Runtime batch at a time, so memory is
    one batch of activations plus ``(K+1)^2 + (K+1) N`` numbers per layer. The rows, im2col
    and the ``X^T X`` accumulation are :mod:`onnx_compress.passes.gram`'s (shared with the
    low-rank pass).

    The bias: a Conv's ``B`` (added when absent), a Gemm's ``C`` (when it is absent, a scalar
    or one row; a Gemm's ``alpha``/``beta`` are divided out), a MatMul's following ``Add`` of a
    constant row (the fitted intercept is added to it). A MatMul without such an Add is fitted
    without intercept.

Order and guard
    Layers are refit in topological order, one *level* at a time: a level holds the consumers
    none of whose inputs depend on a consumer not yet refit, and they are read in one pass
    over the data, so every layer sees the reconstructions of the layers before it. Every
    fifth calibration sample is held out: weights are fitted on the rest, and the refit is kept
    only if it lowers the relative output error ``||X W + b - Y|| / ||Y||`` on the held-out
    samples against the un-refit pruned layer; the kept weights are then fitted on all samples.
    The original model's outputs ``Y`` of every level are read in one pass at the start (up to
    ``REFERENCE_BUDGET_BYTES``): one ONNX Runtime session instead of one per level.
    Rows are subsampled (deterministic RNG) to at most ``max_rows`` per layer.

Limits
    float32 weights only. Skipped, with the reason in the report: grouped convolutions,
    ConvTranspose, weights shared by several nodes, a MatMul whose constant is its first input,
    a Gemm with ``transA`` or a per-row bias, nodes whose input or output cannot be read. The
    error is measured on calibration data, which also chose the weights: check accuracy on
    held-out data.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnx_compress.data import Dataset
from onnx_compress.passes.gram import Moments, conv_geometry, im2col

__all__ = ["LayerReconstruction", "reconstruct"]

logger = logging.getLogger(__name__)

#: one sample in HOLDOUT_EVERY is held out to check a refit
HOLDOUT_EVERY = 5

#: the original model's layer outputs are read once for every level when they fit in this many
#: bytes (otherwise each level runs the original model again)
REFERENCE_BUDGET_BYTES = 512 * 2**20


@dataclasses.dataclass
class LayerReconstruction:
    """What reconstruction did to one consumer layer.

    ``status``: ``refit`` (new weights written), ``kept`` (the refit did not lower the held-out
    error; the pruned weights stay) or ``skipped`` (see ``reason``). Errors are relative output
    errors ``||Y_hat - Y|| / ||Y||`` on held-out calibration samples, before and after the refit.
    """

    node: str
    op_type: str
    status: str
    rows: int = 0
    error_before: float | None = None
    error_after: float | None = None
    reason: str = ""


# ------------------------------------------------------------------------------ targets


@dataclasses.dataclass
class _Target:
    """One consumer layer to refit, in the pruned model."""

    node: ir.Node
    key: str  # its first output's name: the same value name in the original model
    input_name: str
    out_kept: np.ndarray  # kept output channels (indices into the original output)
    weight: np.ndarray  # current weight as K x N (float64)
    bias: np.ndarray  # current bias (N,)
    intercept: bool
    geometry_node: bool  # a Conv (im2col)
    level: int = 0


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1


def _bias_add(node: ir.Node, n_out: int) -> tuple[ir.Node, int] | None:
    """The Add that adds a constant row to a MatMul's output: (node, input index of the constant)."""
    out = node.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    other = 1 - uses[0].idx
    const = _const(add.inputs[other])
    if const is None or const.dtype != np.float32 or const.size != n_out or const.shape[-1:] != (n_out,):
        return None
    out_shape = add.outputs[0].shape
    if out_shape is not None and node.outputs[0].shape is not None and len(out_shape) != len(node.outputs[0].shape):
        return None
    return add, other


def _describe_target(node: ir.Node, kept: Mapping[str, Mapping[int, np.ndarray]]) -> _Target | str | None:
    """A target for ``node``, why it cannot be one (str), or None when its inputs were not cut."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
        return None
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return None
    weight_value = node.inputs[1]
    if op == "MatMul" and str(node.inputs[0].name) in kept:
        return "its constant is the first input"
    cuts = kept.get(str(weight_value.name))
    if op == "Gemm":
        trans_b = node.attributes.get_int("transB", 0)
        in_axis, out_axis = (1, 0) if trans_b else (0, 1)
    elif op == "MatMul":
        in_axis, out_axis = 0, 1
    else:
        in_axis, out_axis = 1, 0
    if cuts is None or in_axis not in cuts:
        return None
    if op == "ConvTranspose":
        return "ConvTranspose is not reconstructed"
    array = _const(weight_value)
    if array is None:
        return "the weight is not a constant"
    if array.dtype != np.float32:
        return f"weight dtype {array.dtype} (float32 only)"
    if not _single_use(weight_value):
        return "the weight is shared with other nodes"
    n_out = array.shape[out_axis]
    out_kept = np.asarray(cuts.get(out_axis, np.arange(n_out)), dtype=np.int64)
    intercept = True
    if op == "Conv":
        if node.attributes.get_int("group", 1) != 1:
            return "grouped convolution"
        matrix = array.reshape(array.shape[0], -1).T
        bias = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros(n_out)
        if bias is None:
            return "the bias is not a constant"
    elif op == "Gemm":
        if node.attributes.get_int("transA", 0):
            return "Gemm with transA"
        if array.ndim != 2:
            return "weight is not 2-D"
        alpha = node.attributes.get_float("alpha", 1.0)
        beta = node.attributes.get_float("beta", 1.0)
        matrix = alpha * (array.T if out_axis == 0 else array)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = _const(node.inputs[2])
            if c is None:
                return "the bias C is not a constant"
            if c.size not in (1, n_out) or (c.ndim == 2 and c.shape[0] != 1):
                return f"the bias C has shape {list(c.shape)} (one row or a scalar only)"
            bias = beta * np.broadcast_to(c.reshape(-1), (n_out,))
        else:
            bias = np.zeros(n_out)
    else:
        if array.ndim != 2:
            return "weight is not 2-D"
        matrix = array
        intercept = _bias_add(node, n_out) is not None
        bias = np.zeros(n_out)
    if len(out_kept) != n_out:
        return f"kept output indices ({len(out_kept)}) disagree with the weight ({n_out})"
    return _Target(node=node, key=str(node.outputs[0].name), input_name=str(node.inputs[0].name),
                   out_kept=out_kept, weight=np.asarray(matrix, np.float64), bias=np.asarray(bias, np.float64),
                   intercept=intercept, geometry_node=op == "Conv")


# ------------------------------------------------------------------------------ statistics


class _Stats:
    """Sufficient statistics of a least-squares fit: Z^T Z (:class:`Moments` of Z = [X, 1]),
    Z^T Y and sum Y^2."""

    def __init__(self, k: int, n: int) -> None:
        self.moments = Moments.zeros(k + 1)
        self.cross = np.zeros((k + 1, n))
        self.yy = 0.0

    @property
    def gram(self) -> np.ndarray:
        return self.moments.gram

    @property
    def rows(self) -> int:
        return self.moments.rows

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if not len(x):
            return
        z = np.empty((x.shape[0], x.shape[1] + 1))
        z[:, :-1] = x
        z[:, -1] = 1.0
        y = np.asarray(y, np.float64)
        self.moments.add(z)
        self.cross += z.T @ y
        self.yy += float((y * y).sum())

    def merged(self, other: _Stats) -> _Stats:
        out = _Stats(self.gram.shape[0] - 1, self.cross.shape[1])
        out.moments = Moments(self.gram + other.gram, self.rows + other.rows)
        out.cross, out.yy = self.cross + other.cross, self.yy + other.yy
        return out

    def relative_error(self, weight: np.ndarray, bias: np.ndarray) -> float:
        """||X W + b - Y|| / ||Y|| over the accumulated rows."""
        theta = np.vstack([weight, bias[None, :]])
        sq = float((theta * (self.gram @ theta)).sum() - 2 * (theta * self.cross).sum() + self.yy)
        return float(np.sqrt(max(sq, 0.0) / self.yy)) if self.yy > 0 else float(np.sqrt(max(sq, 0.0)))

    def solve(self, w0: np.ndarray, b0: np.ndarray, ridge: float, intercept: bool) -> tuple[np.ndarray, np.ndarray]:
        """The ridge fit shrunk towards ``w0`` (see the module docstring)."""
        k = self.gram.shape[0] - 1
        n = max(self.rows, 1)
        gxx, gxy = self.gram[:k, :k], self.cross[:k]
        if intercept:
            mx, my = self.gram[k, :k] / n, self.cross[k] / n
            cxx = gxx - n * np.outer(mx, mx)
            cxy = gxy - n * np.outer(mx, my)
        else:
            cxx, cxy = gxx, gxy - np.outer(self.gram[:k, k], b0)  # the fixed bias is part of the target
        lam = ridge * float(np.trace(cxx)) / k if k else 0.0
        lam = max(lam, 1e-12)
        system = cxx + lam * np.eye(k)
        rhs = cxy + lam * w0
        try:
            weight = np.linalg.solve(system, rhs)
        except np.linalg.LinAlgError:
            weight = np.linalg.lstsq(system, rhs, rcond=None)[0]
        bias = my - mx @ weight if intercept else b0
        return weight, bias


# ------------------------------------------------------------------------------ the pass step


def _levels(model: ir.Model, targets: dict[int, _Target]) -> None:
    """Set each target's level: 1 + the highest level of a target upstream of it."""
    value_level: dict[int, int] = {}
    for node in model.graph:
        upstream = max((value_level.get(id(v), 0) for v in node.inputs if v is not None), default=0)
        target = targets.get(id(node))
        if target is not None:
            target.level = upstream + 1
            upstream = target.level
        for out in node.outputs:
            value_level[id(out)] = upstream


def _rows(target: _Target, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, fraction: float,
          sample_offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (X, Y, sample index of each row) of one batch, subsampled to ``fraction``."""
    batch = x.shape[0]
    if target.geometry_node:
        geometry = conv_geometry(target.node, x.shape[2:])
        total = batch * int(np.prod(geometry.output_size(x.shape[2:])))
        positions = np.flatnonzero(rng.random(total) < fraction) if fraction < 1 else np.arange(total)
        xs = im2col(x, geometry, positions)
        ys = np.moveaxis(y, 1, -1).reshape(total, -1)[positions]
        per_sample = total // batch
    else:
        xs = x.reshape(-1, x.shape[-1])
        ys = y.reshape(-1, y.shape[-1])
        per_sample = xs.shape[0] // batch
        positions = np.flatnonzero(rng.random(xs.shape[0]) < fraction) if fraction < 1 else np.arange(xs.shape[0])
        xs, ys = xs[positions], ys[positions]
    return xs, ys[:, target.out_kept], sample_offset + positions // max(per_sample, 1)


def _rows_per_sample(target: _Target, x: np.ndarray) -> int:
    if target.geometry_node:
        return int(np.prod(conv_geometry(target.node, x.shape[2:]).output_size(x.shape[2:])))
    return int(np.prod(x.shape[1:-1])) if x.ndim > 1 else 1


def _reference_outputs(original: ir.Model, keys: list[str], data: Dataset, batch_size: int,
                       budget: int) -> dict[str, list[np.ndarray]] | None:
    """Every target's output in the original model, per batch, from ONE pass over ``data``
    (they do not change while the pruned model is refit level by level); None when they would
    take more than ``budget`` bytes (each level then runs the original model again)."""
    from onnx_compress.runtime.activations import iter_activations
    from onnx_compress.runtime.session import SessionSettings

    stored: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    total = 0
    for ys in iter_activations(original, keys, data, batch_size=batch_size, settings=SessionSettings(provider="cpu")):
        for key in keys:
            stored[key].append(ys[key])
            total += ys[key].nbytes
        if total > budget:
            return None
    return stored


def _collect(original: ir.Model, pruned: ir.Model, targets: list[_Target], data: Dataset, max_rows: int,
             batch_size: int, reference: dict[str, list[np.ndarray]] | None = None) -> dict[int, tuple[_Stats, _Stats]]:
    """(fit, held-out) statistics of every target, from one pass over ``data``."""
    from onnx_compress.runtime.activations import iter_activations
    from onnx_compress.runtime.session import SessionSettings

    settings = SessionSettings(provider="cpu")
    inputs = list(dict.fromkeys(t.input_name for t in targets))
    outputs = list(dict.fromkeys(t.key for t in targets))
    stats: dict[int, tuple[_Stats, _Stats]] = {}
    rngs = {id(t.node): np.random.default_rng(i) for i, t in enumerate(targets)}
    fractions: dict[int, float] = {}
    offset = 0
    if reference is not None:
        originals = ({key: reference[key][i] for key in outputs} for i in range(len(reference[outputs[0]])))
    else:
        originals = iter_activations(original, outputs, data, batch_size=batch_size, settings=settings)
    for xs, ys in zip(iter_activations(pruned, inputs, data, batch_size=batch_size, settings=settings), originals):
        batch = next(iter(xs.values())).shape[0]
        for target in targets:
            key = id(target.node)
            x = np.asarray(xs[target.input_name], np.float64)
            if key not in fractions:
                fractions[key] = min(1.0, max_rows / max(1, len(data) * _rows_per_sample(target, x)))
                k, n = target.weight.shape[0], len(target.out_kept)
                stats[key] = (_Stats(k, n), _Stats(k, n))
            rows_x, rows_y, sample = _rows(target, x, ys[target.key], rngs[key], fractions[key], offset)
            held = sample % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
            stats[key][0].add(rows_x[~held], rows_y[~held])
            stats[key][1].add(rows_x[held], rows_y[held])
        offset += batch
    return stats


def _set_constant(model: ir.Model, node: ir.Node, index: int, array: np.ndarray, name: str) -> None:
    """Give ``node`` input ``index`` the constant ``array`` (a new tensor; a new value when shared)."""
    array = np.ascontiguousarray(array)
    current = node.inputs[index] if index < len(node.inputs) else None
    if current is not None and current.is_initializer() and _single_use(current) and not current.is_graph_input():
        current.const_value = ir.Tensor(array, name=current.name)
        current.shape = ir.Shape(array.shape)
        return
    names = set(model.graph.initializers)
    unique, counter = name, 1
    while unique in names:
        unique, counter = f"{name}_{counter}", counter + 1
    value = ir.Value(name=unique, const_value=ir.Tensor(array, name=unique), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    model.graph.register_initializer(value)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


def _write(model: ir.Model, target: _Target, weight: np.ndarray, bias: np.ndarray) -> None:
    """Store the refit ``weight`` (K x N) and ``bias`` in the node's own layout."""
    node = target.node
    base = str(node.name or node.op_type)
    old = node.inputs[1].const_value.numpy()  # type: ignore[union-attr]
    if node.op_type == "Conv":
        _set_constant(model, node, 1, weight.T.reshape(old.shape).astype(np.float32), f"{base}_weight")
        _set_constant(model, node, 2, bias.astype(np.float32), f"{base}_bias")
    elif node.op_type == "Gemm":
        alpha = node.attributes.get_float("alpha", 1.0)
        matrix = weight / alpha
        stored = matrix.T if node.attributes.get_int("transB", 0) else matrix
        _set_constant(model, node, 1, stored.astype(np.float32), f"{base}_weight")
        beta = node.attributes.get_float("beta", 1.0)
        if beta == 0:
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)  # type: ignore[arg-type]
            beta = 1.0
        _set_constant(model, node, 2, (bias / beta).astype(np.float32), f"{base}_bias")
    else:
        _set_constant(model, node, 1, weight.astype(np.float32), f"{base}_weight")
        found = _bias_add(node, weight.shape[1]) if target.intercept else None
        if found is not None:
            add, index = found
            const = add.inputs[index].const_value.numpy()  # type: ignore[union-attr]
            shifted = (const.astype(np.float64) + bias.reshape(const.shape)).astype(np.float32)
            _set_constant(model, add, index, shifted, f"{base}_bias")


def reconstruct(
    original: ir.Model,
    pruned: ir.Model,
    kept: Mapping[str, Mapping[int, np.ndarray]],
    data: Dataset,
    *,
    ridge: float,
    max_rows: int,
    batch_size: int = 32,
) -> list[LayerReconstruction]:
    """Refit, in place, the consumer layers of ``pruned`` whose input channels were cut.

    Args:
        original: the model before pruning (the node output names are shared with ``pruned``).
        pruned: the pruned model, modified in place.
        kept: for every cut initializer (by name), ``{axis: kept indices}``.
        data: calibration samples.
        ridge: regularization strength, relative to ``trace(Cxx) / K``.
        max_rows: rows (output positions x samples) per layer at most.
    """
    reports: list[LayerReconstruction] = []
    targets: dict[int, _Target] = {}
    for node in pruned.graph:
        found = _describe_target(node, kept)
        if found is None:
            continue
        name = str(node.name or node.op_type)
        if isinstance(found, str):
            reports.append(LayerReconstruction(name, node.op_type, "skipped", reason=found))
            continue
        targets[id(node)] = found
    _levels(pruned, targets)
    by_level: dict[int, list[_Target]] = {}
    for target in targets.values():
        by_level.setdefault(target.level, []).append(target)
    reference = None
    if len(by_level) > 1:
        keys = list(dict.fromkeys(t.key for t in targets.values()))
        reference = _reference_outputs(original, keys, data, batch_size, REFERENCE_BUDGET_BYTES)
    for level in sorted(by_level):
        group = by_level[level]
        stats = _collect(original, pruned, group, data, max_rows, batch_size, reference)
        for target in group:
            name = str(target.node.name or target.node.op_type)
            fit, held = stats[id(target.node)]
            report = LayerReconstruction(name, target.node.op_type, "kept", rows=fit.rows + held.rows)
            reports.append(report)
            check = held if held.rows else fit
            report.error_before = check.relative_error(target.weight, target.bias)
            weight, bias = fit.solve(target.weight, target.bias, ridge, target.intercept)
            after = check.relative_error(weight, bias)
            if not np.isfinite(after) or after >= report.error_before:
                report.error_after = after if np.isfinite(after) else None
                report.reason = "the refit did not lower the held-out output error"
                continue
            report.error_after = after
            weight, bias = fit.merged(held).solve(target.weight, target.bias, ridge, target.intercept)
            _write(pruned, target, weight, bias)
            report.status = "refit"
            logger.info("reconstructed %s: output error %.4f -> %.4f (%d rows)", name, report.error_before,
                        report.error_after, report.rows)
    order = {str(node.name or node.op_type): i for i, node in enumerate(pruned.graph)}
    reports.sort(key=lambda r: order.get(r.node, -1))
    return reports
