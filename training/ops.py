"""ONNX operators as torch functions: what the bridge (``bridge.py``) executes, node by node.

Each entry of :data:`OPS` takes ``(node, inputs)`` — the ``onnx_ir.Node`` (for its attributes)
and its input tensors (``None`` for an omitted optional input) — and returns the node's outputs
(one tensor or a list). They follow the ONNX operator definitions of opsets 13-20 (the forms
torch.onnx, tf2onnx and onnxscript's optimizer write); an attribute value an entry does not
handle raises ``UnsupportedOp`` naming the node, so a graph is refused before training, never
computed wrongly. Float tensors stay float32 (the student is trained in float32); integer
tensors are int64 shape arithmetic and token ids.

Contrib ops (``com.microsoft``) that the project's ``fuse`` pass writes and that are plain
element-wise maths are here too (``Gelu``, ``FastGelu``, ``BiasGelu``,
``SkipLayerNormalization``); fused attention is not: run recovery before ``fuse`` (the pipeline
and presets do).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.optional import require

__all__ = ["OPS", "UnsupportedOp", "op_key", "torch_dtype"]

torch = require("torch", "recovery training")
F = torch.nn.functional

Tensor = Any  # torch.Tensor
OpFn = Callable[[ir.Node, Sequence[Any]], Any]


class UnsupportedOp(Exception):
    """An operator (or an attribute value of one) the bridge does not execute."""


def op_key(node: ir.Node) -> str:
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    return f"{domain}::{node.op_type}" if domain else node.op_type


def _attr(node: ir.Node, name: str, default: Any = None) -> Any:
    attr = node.attributes.get(name)
    if attr is None:
        return default
    value = attr.value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return value


def torch_dtype(dtype: ir.DataType | int) -> Any:
    np_dtype = ir.DataType(dtype).numpy()
    if np_dtype == np.bool_:
        return torch.bool
    return torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype


def _ints(tensor: Tensor | None) -> list[int]:
    return [] if tensor is None else [int(v) for v in tensor.reshape(-1).tolist()]


# --------------------------------------------------------------------------- element-wise

def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda node, x: fn(x[0])


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    return lambda node, x: fn(x[0], x[1])


def _gelu(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    approximate = _attr(node, "approximate", "none")
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    return F.gelu(x[0], approximate=approximate)


def _clip(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    low = x[1] if len(x) > 1 and x[1] is not None else _attr(node, "min")
    high = x[2] if len(x) > 2 and x[2] is not None else _attr(node, "max")
    out = x[0]
    if low is not None:
        out = torch.maximum(out, torch.as_tensor(low, dtype=out.dtype, device=out.device))
    if high is not None:
        out = torch.minimum(out, torch.as_tensor(high, dtype=out.dtype, device=out.device))
    return out


def _div(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a: Tensor, b: Tensor) -> Tensor:
    if b.numel() == 1 and float(b) == 2.0:
        return a * a  # what ONNX Runtime computes for the LayerNorm-by-hand pattern
    return torch.pow(a, b.to(a.dtype) if a.dtype.is_floating_point else b)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def run(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
        out = x[0]
        for other in x[1:]:
            out = fn(out, other)
        return out
    return run


# --------------------------------------------------------------------------- linear algebra

def _gemm(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    a, b = x[0], x[1]
    if _attr(node, "transA", 0):
        a = a.transpose(0, 1)
    if _attr(node, "transB", 0):
        b = b.transpose(0, 1)
    out = a @ b
    alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
    if alpha != 1.0:
        out = out * alpha
    if len(x) > 2 and x[2] is not None:
        out = out + (x[2] * beta if beta != 1.0 else x[2])
    return out


def _pads(node: ir.Node, spatial: int, x: Tensor, kernel: list[int], strides: list[int],
          dilations: list[int]) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] after resolving auto_pad."""
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("NOTSET", ""):
        return _attr(node, "pads", [0] * (2 * spatial))
    if auto_pad == "VALID":
        return [0] * (2 * spatial)
    begins, ends = [], []
    for i in range(spatial):
        size = x.shape[2 + i]
        out = -(-size // strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _torch_pad(pads: list[int], spatial: int) -> list[int]:
    """ONNX [b1..bn, e1..en] -> F.pad's (last axis first) [bn, en, ..., b1, e1]."""
    out: list[int] = []
    for i in reversed(range(spatial)):
        out += [pads[i], pads[i + spatial]]
    return out


def _conv(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    data, weight = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    spatial = data.dim() - 2
    if spatial not in (1, 2, 3):
        raise UnsupportedOp(f"Conv with {spatial} spatial axes")
    kernel = _attr(node, "kernel_shape", list(weight.shape[2:]))
    strides = _attr(node, "strides", [1] * spatial)
    dilations = _attr(node, "dilations", [1] * spatial)
    pads = _pads(node, spatial, data, kernel, strides, dilations)
    group = int(_attr(node, "group", 1))
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    if pads[:spatial] == pads[spatial:]:
        return conv(data, weight, bias, stride=strides, padding=pads[:spatial], dilation=dilations, groups=group)
    return conv(F.pad(data, _torch_pad(pads, spatial)), weight, bias, stride=strides, dilation=dilations, groups=group)


def _pool(kind: str) -> OpFn:
    def run(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
        data = x[0]
        spatial = data.dim() - 2
        if spatial not in (1, 2, 3):
            raise UnsupportedOp(f"{kind} pooling with {spatial} spatial axes")
        kernel = _attr(node, "kernel_shape")
        strides = _attr(node, "strides", [1] * spatial)
        dilations = _attr(node, "dilations", [1] * spatial)
        pads = _pads(node, spatial, data, kernel, strides, dilations)
        ceil_mode = bool(_attr(node, "ceil_mode", 0))
        if kind == "max":
            if len(node.outputs) > 1 and node.outputs[1].uses():
                raise UnsupportedOp("MaxPool's Indices output")
            pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
            if pads[:spatial] != pads[spatial:] or any(p * 2 > k for p, k in zip(pads, kernel * 2)):
                data = F.pad(data, _torch_pad(pads, spatial), value=-math.inf)
                pads = [0] * (2 * spatial)
            return pool(data, kernel, strides, pads[:spatial], dilations, ceil_mode=ceil_mode)
        if any(d != 1 for d in dilations):
            raise UnsupportedOp("AveragePool with dilations")
        include = bool(_attr(node, "count_include_pad", 0))
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
        if pads[:spatial] != pads[spatial:]:
            if not include:
                raise UnsupportedOp("AveragePool with asymmetric pads and count_include_pad=0")
            data = F.pad(data, _torch_pad(pads, spatial))
            pads = [0] * (2 * spatial)
        return pool(data, kernel, strides, pads[:spatial], ceil_mode=ceil_mode, count_include_pad=include)
    return run


def _global_pool(kind: str) -> OpFn:
    def run(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
        dims = tuple(range(2, x[0].dim()))
        return x[0].mean(dims, keepdim=True) if kind == "avg" else x[0].amax(dims, keepdim=True)
    return run


# --------------------------------------------------------------------------- normalization

def _batch_norm(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    if _attr(node, "training_mode", 0):
        raise UnsupportedOp("BatchNormalization with training_mode=1")
    data, scale, bias, mean, var = x[:5]
    shape = [1, -1] + [1] * (data.dim() - 2)
    eps = float(_attr(node, "epsilon", 1e-5))
    inv = scale / torch.sqrt(var + eps)
    return (data - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)


def _layer_norm(node: ir.Node, x: Sequence[Tensor]) -> Any:
    data, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    axis = int(_attr(node, "axis", -1))
    axis = axis + data.dim() if axis < 0 else axis
    eps = float(_attr(node, "epsilon", 1e-5))
    if any(o.uses() for o in node.outputs[1:]):
        raise UnsupportedOp("LayerNormalization's Mean/InvStdDev outputs")
    dims = tuple(range(axis, data.dim()))
    if scale.shape == data.shape[axis:]:
        return F.layer_norm(data, data.shape[axis:], scale, bias, eps)
    mean = data.mean(dims, keepdim=True)
    var = ((data - mean) ** 2).mean(dims, keepdim=True)
    out = (data - mean) / torch.sqrt(var + eps) * scale
    return out + bias if bias is not None else out


def _skip_layer_norm(node: ir.Node, x: Sequence[Tensor]) -> Any:
    if any(o.uses() for o in node.outputs[1:3]):
        raise UnsupportedOp("SkipLayerNormalization's mean/inv_std_var outputs")
    summed = x[0] + x[1]
    if len(x) > 4 and x[4] is not None:
        summed = summed + x[4]
    eps = float(_attr(node, "epsilon", 1e-12))
    out = F.layer_norm(summed, summed.shape[-1:], x[2], x[3] if len(x) > 3 else None, eps)
    return [out, None, None, summed][: len(node.outputs)]


def _softmax(log: bool) -> OpFn:
    def run(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
        opset = node.graph.opset_imports.get("", 13) if node.graph is not None else 13
        axis = int(_attr(node, "axis", -1 if opset >= 13 else 1))
        if opset < 13:
            flat = x[0].reshape(int(np.prod(x[0].shape[:axis])) if axis else 1, -1)
            out = F.log_softmax(flat, -1) if log else F.softmax(flat, -1)
            return out.reshape(x[0].shape)
        return F.log_softmax(x[0], axis) if log else F.softmax(x[0], axis)
    return run


# --------------------------------------------------------------------------- shapes and indexing

def _opset(node: ir.Node) -> int:
    graph = node.graph
    return graph.opset_imports.get("", 17) if graph is not None else 17


def _reshape(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    shape = _ints(x[1])
    if not _attr(node, "allowzero", 0):
        shape = [x[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x[0].reshape(shape)


def _flatten(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    axis = int(_attr(node, "axis", 1))
    axis = axis + x[0].dim() if axis < 0 else axis
    lead = int(np.prod(x[0].shape[:axis])) if axis else 1
    return x[0].reshape(lead, -1)


def _transpose(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    perm = _attr(node, "perm", list(reversed(range(x[0].dim()))))
    return x[0].permute(perm)


def _axes(node: ir.Node, x: Sequence[Tensor], position: int) -> list[int] | None:
    if len(x) > position and x[position] is not None:
        return _ints(x[position])
    return _attr(node, "axes")


def _unsqueeze(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    axes = _axes(node, x, 1) or []
    rank = x[0].dim() + len(axes)
    out = x[0]
    for axis in sorted(a + rank if a < 0 else a for a in axes):
        out = out.unsqueeze(axis)
    return out


def _squeeze(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    axes = _axes(node, x, 1)
    if axes is None:
        return x[0].squeeze()
    rank = x[0].dim()
    out = x[0]
    for axis in sorted((a + rank if a < 0 else a for a in axes), reverse=True):
        out = out.squeeze(axis)
    return out


def _concat(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    parts = [t for t in x if t is not None and not (t.dim() == 1 and t.shape[0] == 0 and len(x) > 1)]
    return torch.cat(parts or list(x), dim=int(_attr(node, "axis")))


def _split(node: ir.Node, x: Sequence[Tensor]) -> list[Tensor]:
    axis = int(_attr(node, "axis", 0))
    sizes = _ints(x[1]) if len(x) > 1 and x[1] is not None else _attr(node, "split")
    if not sizes:
        count = len(node.outputs)
        dim = x[0].shape[axis]
        chunk = -(-dim // count)
        sizes = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
    return list(torch.split(x[0], sizes, dim=axis))


def _slice(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    data = x[0]
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * data.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + data.dim() if axis < 0 else axis
        dim = data.shape[axis]
        lo, hi, st = slice(start, end, step).indices(dim)
        if st > 0:
            index[axis] = slice(lo, hi, st)
        else:
            positions = list(range(lo, hi, st))
            flips.append((axis, torch.tensor(positions, dtype=torch.long, device=data.device)))
    out = data[tuple(index)]
    for axis, positions in flips:
        out = out.index_select(axis, positions)
    return out


def _gather(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    data, indices = x[0], x[1].long()
    axis = int(_attr(node, "axis", 0))
    axis = axis + data.dim() if axis < 0 else axis
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    picked = data.index_select(axis, indices.reshape(-1))
    return picked.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]))


def _gather_elements(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    axis = int(_attr(node, "axis", 0))
    return torch.gather(x[0], axis, x[1].long())


def _gather_nd(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    data, indices = x[0], x[1].long()
    b = int(_attr(node, "batch_dims", 0))
    k = indices.shape[-1]
    batch = int(np.prod(data.shape[:b])) if b else 1
    flat = data.reshape(batch, *data.shape[b:])
    index = indices.reshape(batch, -1, k)
    sizes = torch.tensor(data.shape[b:b + k], dtype=torch.long, device=index.device)
    index = torch.where(index < 0, index + sizes, index)
    rows = torch.arange(batch, device=index.device)[:, None].expand(batch, index.shape[1])
    picked = flat[(rows, *(index[..., j] for j in range(k)))]
    return picked.reshape((*indices.shape[:-1], *data.shape[b + k:]))


def _shape(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    shape = list(x[0].shape)
    start, end = _attr(node, "start", 0), _attr(node, "end")
    return torch.tensor(shape[start:end], dtype=torch.int64)


def _size(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    return torch.tensor(x[0].numel(), dtype=torch.int64)


def _expand(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    shape = torch.broadcast_shapes(tuple(x[0].shape), tuple(_ints(x[1])))
    return x[0].expand(shape)


def _tile(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    return x[0].repeat(*_ints(x[1]))


def _cast(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    return x[0].to(torch_dtype(int(_attr(node, "to"))))


def _cast_like(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    return x[0].to(x[1].dtype)


def _constant(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    for name in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        attr = node.attributes.get(name)
        if attr is None:
            continue
        if name == "value":
            return torch.from_numpy(np.array(attr.value.numpy()))
        dtype = np.float32 if "float" in name else np.int64
        return torch.from_numpy(np.array(attr.value, dtype=dtype))
    raise UnsupportedOp("Constant without a value/value_float(s)/value_int(s) attribute")


def _constant_of_shape(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    attr = node.attributes.get("value")
    fill = np.array(attr.value.numpy()).reshape(-1) if attr is not None else np.zeros(1, np.float32)
    return torch.full(_ints(x[0]), fill[0].item(), dtype=torch.from_numpy(fill).dtype)


def _range(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    return torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype)


def _reduce(fn: str) -> OpFn:
    def run(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
        keep = bool(_attr(node, "keepdims", 1))
        axes = _axes(node, x, 1)
        if not axes:
            if _attr(node, "noop_with_empty_axes", 0):
                return x[0]
            axes = list(range(x[0].dim()))
        data = x[0]
        if fn == "mean":
            return data.mean(axes, keepdim=keep)
        if fn == "sum":
            return data.sum(axes, keepdim=keep)
        if fn == "max":
            return data.amax(axes, keepdim=keep)
        if fn == "min":
            return data.amin(axes, keepdim=keep)
        if fn == "l2":
            return torch.sqrt((data * data).sum(axes, keepdim=keep))
        if fn == "sumsquare":
            return (data * data).sum(axes, keepdim=keep)
        if fn == "prod":  # torch.prod reduces one axis at a time
            for axis in sorted((a % data.dim() for a in axes), reverse=True):
                data = data.prod(axis, keepdim=keep)
            return data
        raise AssertionError(fn)
    return run


def _cumsum(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    """ONNX CumSum: ``exclusive`` leaves the element itself out, ``reverse`` sums from the end."""
    axis = int(x[1].reshape(-1)[0].item())
    data = x[0].flip(axis) if _attr(node, "reverse", 0) else x[0]
    total = data.cumsum(axis)
    if _attr(node, "exclusive", 0):
        total = total - data
    return total.flip(axis) if _attr(node, "reverse", 0) else total


def _where(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    return torch.where(x[0].bool(), x[1], x[2])


def _identity(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    return x[0]


def _dropout(node: ir.Node, x: Sequence[Tensor]) -> Any:
    if len(node.outputs) > 1 and node.outputs[1].uses():
        raise UnsupportedOp("Dropout's mask output")
    return [x[0], None][: len(node.outputs)]


def _bias_gelu(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    return F.gelu(x[0] + x[1])


def _fast_gelu(node: ir.Node, x: Sequence[Tensor]) -> Tensor:
    data = x[0] + x[1] if len(x) > 1 and x[1] is not None else x[0]
    return F.gelu(data, approximate="tanh")


OPS: dict[str, OpFn] = {
    # element-wise
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _binary(_div),
    "Pow": _binary(_pow), "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt), "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Not": _unary(torch.logical_not),
    "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf), "Sqrt": _unary(torch.sqrt), "Exp": _unary(torch.exp), "Log": _unary(torch.log),
    "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil), "IsNaN": _unary(torch.isnan),
    "IsInf": _unary(torch.isinf),
    "LeakyRelu": lambda node, x: F.leaky_relu(x[0], float(_attr(node, "alpha", 0.01))),
    "HardSigmoid": lambda node, x: torch.clamp(x[0] * float(_attr(node, "alpha", 0.2)) + float(_attr(node, "beta", 0.5)), 0, 1),
    "Softplus": _unary(F.softplus), "Gelu": _gelu, "Clip": _clip, "Where": _where,
    "Softmax": _softmax(False), "LogSoftmax": _softmax(True),
    # linear algebra, convolution, pooling
    "MatMul": _binary(torch.matmul), "Gemm": _gemm, "Conv": _conv,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool("avg"), "GlobalMaxPool": _global_pool("max"),
    # normalization
    "BatchNormalization": _batch_norm, "LayerNormalization": _layer_norm,
    # shapes, indexing, constants
    "Reshape": _reshape, "Flatten": _flatten, "Transpose": _transpose, "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze, "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather,
    "GatherElements": _gather_elements, "GatherND": _gather_nd, "Shape": _shape, "Size": _size, "Expand": _expand, "Tile": _tile,
    "Cast": _cast, "CastLike": _cast_like, "Constant": _constant, "ConstantOfShape": _constant_of_shape,
    "Range": _range, "Identity": _identity, "Dropout": _dropout,
    "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"), "ReduceL2": _reduce("l2"), "ReduceSumSquare": _reduce("sumsquare"),
    "ReduceProd": _reduce("prod"), "CumSum": _cumsum,
    # contrib ops the fuse pass writes (element-wise maths only)
    "com.microsoft::Gelu": _gelu, "com.microsoft::FastGelu": _fast_gelu, "com.microsoft::BiasGelu": _bias_gelu,
    "com.microsoft::SkipLayerNormalization": _skip_layer_norm,
}
