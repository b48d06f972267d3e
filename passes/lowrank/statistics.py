"""Second moments of each layer's input rows, ``G = X^T X``, streamed over calibration data.

For ``Y = X W`` the output error of any replacement ``W'`` on the calibration rows is
``||X (W - W')||_F^2 = trace((W - W')^T G (W - W'))``, so the K x K matrix ``G`` (and the number
of rows) is all the data-aware factorization and the error report need: activations are never
stored. The model runs once in ONNX Runtime with every needed input value exposed
(:func:`onnx_compress.runtime.activations.iter_activations`); each batch's rows are added to
``G`` in float64 and the batch is dropped.

Rows of X per layer kind (see ``targets.py``): MatMul, every vector along the last axis (a
transformer's ``[batch, sequence, K]`` gives ``batch * sequence`` rows); Gemm, the rows of ``A``,
or its columns when ``transA``; Conv, every receptive-field patch (im2col) under the node's
kernel, strides, pads (``auto_pad`` included) and dilations, laid out ``(C_in, k1, ..., kd)`` to
match the kernel reshaped to ``C_out x (C_in k1 ... kd)``. Layers that see the same rows (Q, K
and V projections of one input) share one ``G``.

Limits: padding positions of sequence models (tokens masked out later) count like real tokens,
since the pass cannot know which rows the model ignores downstream.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from onnx_compress.data import Dataset
from onnx_compress.errors import DataError
from onnx_compress.passes.lowrank.targets import Target, conv_geometry
from onnx_compress.runtime.activations import iter_activations
from onnx_compress.runtime.session import SessionSettings

__all__ = ["Moments", "collect_moments", "conv_patches", "layer_rows"]

logger = logging.getLogger(__name__)

#: rows of a conv's patch matrix built at once (bounds the im2col copy to ~ this x K floats)
_PATCH_ROWS_PER_CHUNK = 16384


@dataclasses.dataclass
class Moments:
    """``gram = sum of x x^T`` over ``rows`` input rows of one layer (float64)."""

    gram: np.ndarray
    rows: int = 0

    def add(self, rows: np.ndarray) -> None:
        block = np.asarray(rows, dtype=np.float64)
        if not np.all(np.isfinite(block)):
            raise DataError("calibration activations contain NaN or infinity; check the calibration data")
        self.gram += block.T @ block
        self.rows += block.shape[0]

    @property
    def mean(self) -> np.ndarray:
        """``X^T X / n``: the second moment per row."""
        return self.gram / max(self.rows, 1)


def _same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def conv_patches(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    auto_pad: str = "NOTSET",
) -> np.ndarray:
    """im2col: the receptive fields of a Conv over ``x`` (``[B, C, *spatial]``) as rows.

    Returns ``[B * prod(out_spatial), C * prod(kernel)]`` so that ``patches @ W.reshape(C_out, -1).T``
    equals the convolution (without bias) in ``[B, *out_spatial, C_out]`` order.
    """
    dims = len(kernel)
    spatial = x.shape[2:]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [_same_pads(spatial[i], kernel[i], strides[i], dilations[i], auto_pad == "SAME_UPPER")
                 for i in range(dims)]
    elif auto_pad == "VALID":
        pairs = [(0, 0)] * dims
    else:
        pairs = [(int(pads[i]), int(pads[i + dims])) for i in range(dims)]
    padded = np.pad(x, [(0, 0), (0, 0), *pairs]) if any(p for pair in pairs for p in pair) else x
    span = [(kernel[i] - 1) * dilations[i] + 1 for i in range(dims)]
    windows = sliding_window_view(padded, span, axis=tuple(range(2, 2 + dims)))
    # [B, C, *out_full, *span] -> stride the output positions, dilate the window
    index = (slice(None), slice(None), *[slice(None, None, s) for s in strides],
             *[slice(None, None, d) for d in dilations])
    windows = windows[index]
    # -> [B, *out, C, *kernel]
    order = (0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims))
    return windows.transpose(order).reshape(-1, x.shape[1] * math.prod(kernel))


def layer_rows(target: Target, x: np.ndarray) -> list[np.ndarray]:
    """The rows of ``X`` for ``target`` from its input batch, in chunks of bounded size."""
    if target.kind == "conv":
        kernel, strides, pads, dilations, auto_pad = conv_geometry(target.node, target.weight)
        out_positions = max(1, math.prod(max(1, s // st) for s, st in zip(x.shape[2:], strides)))
        per_chunk = max(1, _PATCH_ROWS_PER_CHUNK // out_positions)
        return [conv_patches(x[i : i + per_chunk], kernel, strides, pads, dilations, auto_pad)
                for i in range(0, x.shape[0], per_chunk)]
    if target.kind == "gemm" and target.node.attributes.get_int("transA", 0):
        return [x.T]
    return [x.reshape(-1, x.shape[-1])] if x.ndim > 1 else [x.reshape(1, -1)]


def collect_moments(
    model: ir.Model,
    targets: Sequence[Target],
    data: Dataset,
    *,
    batch_size: int = 32,
    settings: SessionSettings | None = None,
) -> dict[tuple[object, ...], Moments]:
    """``G = X^T X`` for every distinct :meth:`Target.statistics_key`, over all of ``data``."""
    from tqdm.auto import tqdm

    by_key: dict[tuple[object, ...], Target] = {}
    for target in targets:
        by_key.setdefault(target.statistics_key(), target)
    moments = {key: Moments(np.zeros((t.k, t.k), dtype=np.float64)) for key, t in by_key.items()}
    names = [str(t.input.name) for t in by_key.values()]
    batches = iter_activations(model, names, data, batch_size=batch_size, settings=settings)
    total = math.ceil(len(data) / batch_size)
    for values in tqdm(batches, total=total, desc="lowrank calibration", unit="batch", disable=None):
        for key, target in by_key.items():
            x = values[str(target.input.name)]
            for rows in layer_rows(target, x):
                if rows.shape[1] != target.k:
                    raise DataError(
                        f"layer {target.name}: its input rows have {rows.shape[1]} features, its weight "
                        f"expects {target.k}; the calibration data does not fit the model"
                    )
                moments[key].add(rows)
    logger.info("calibration statistics for %d distinct layer inputs over %d samples", len(moments), len(data))
    return moments
