"""The rows a weighted layer reads, and their Gram matrix ``X^T X``: shared by the data-aware passes.

Every weighted layer is seen as ``Y = X W`` with ``X`` the rows of its input: the vectors
along the last axis for MatMul, every receptive-field patch for Conv (*im2col*). The low-rank
pass (``lowrank/statistics.py``: ``G = X^T X`` chooses ranks and whitens) and the
reconstruction after structured pruning (``prune/reconstruct.py``: ``Z^T Z`` and ``Z^T Y`` with
``Z = [X, 1]`` re-fit weights) both need exactly these rows and their second moments; this
module is the one place that computes them.

Conv geometry
    For an input of spatial size ``S_i``, kernel ``k_i``, stride ``s_i``, dilation ``d_i`` and pads
    ``(b_i, e_i)``, the output size is ``(S_i + b_i + e_i - d_i (k_i - 1) - 1) // s_i + 1``.
    ``auto_pad = SAME_UPPER / SAME_LOWER`` pads ``max(0, (ceil(S_i / s_i) - 1) s_i + (k_i - 1) d_i + 1 - S_i)``
    in total, the odd element at the end (UPPER) or the beginning (LOWER); ``VALID`` pads
    nothing; ``NOTSET`` uses ``pads`` (begin values of every axis, then end values).

im2col
    Row ``r`` for output position ``(n, o_1, ..., o_d)`` (flattened in C order over
    ``(N, *output)``) holds ``x_pad[n, c, o_i s_i + j_i d_i]`` for every ``(c, j_1..j_d)`` in C
    order: the order of a Conv weight ``W[m, c, j_1, ..., j_d]`` flattened, so
    ``im2col(x) @ W.reshape(M, -1).T + B`` is the Conv output moved to channels-last. Grouped
    convolutions are not covered (both passes refuse them).

Moments
    ``X^T X`` is accumulated in float64, one batch of rows at a time, so the rows are never
    stored; non-finite activations are refused with a :class:`~onnx_compress.errors.DataError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from onnx_compress.errors import DataError

__all__ = ["ConvAttributes", "ConvGeometry", "conv_attributes", "conv_geometry", "im2col", "Moments"]


@dataclasses.dataclass(frozen=True)
class ConvAttributes:
    """A Conv's kernel and attributes with ONNX's defaults filled in (``auto_pad`` unresolved:
    what two Convs must share to read the same patches of the same input)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    auto_pad: str

    def resolve(self, spatial: Sequence[int]) -> ConvGeometry:
        """The geometry on an input of spatial size ``spatial`` (``auto_pad`` turned into pads)."""
        rank = len(self.kernel)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
                total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
                small = total // 2
                begin.append(small if self.auto_pad == "SAME_UPPER" else total - small)
                end.append(total - begin[-1])
            return ConvGeometry(self.kernel, self.strides, self.dilations, tuple(begin), tuple(end))
        if self.auto_pad == "VALID":
            return ConvGeometry(self.kernel, self.strides, self.dilations, (0,) * rank, (0,) * rank)
        return ConvGeometry(self.kernel, self.strides, self.dilations, self.pads[:rank], self.pads[rank:])


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Kernel, strides, dilations and (begin, end) pads of one Conv, per spatial axis."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]

    def output_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return tuple((size + b + e - d * (k - 1) - 1) // s + 1 for size, k, s, d, b, e in zip(
            spatial, self.kernel, self.strides, self.dilations, self.pads_begin, self.pads_end))


def conv_attributes(node: ir.Node) -> ConvAttributes:
    """The attributes of Conv ``node`` (its weight, input 1, must be a constant: the kernel size)."""
    weight = node.inputs[1].const_value  # type: ignore[union-attr]
    kernel = tuple(int(k) for k in weight.shape[2:])  # type: ignore[union-attr]
    rank = len(kernel)
    attrs = node.attributes
    return ConvAttributes(
        kernel=kernel,
        strides=tuple(attrs.get_ints("strides", [1] * rank) or [1] * rank),
        pads=tuple(attrs.get_ints("pads", [0] * 2 * rank) or [0] * 2 * rank),
        dilations=tuple(attrs.get_ints("dilations", [1] * rank) or [1] * rank),
        auto_pad=attrs.get_string("auto_pad", "NOTSET") or "NOTSET",
    )


def conv_geometry(node: ir.Node, spatial: Sequence[int]) -> ConvGeometry:
    """The geometry of Conv ``node`` on an input of spatial size ``spatial`` (resolves auto_pad)."""
    return conv_attributes(node).resolve(spatial)


def im2col(x: np.ndarray, geometry: ConvGeometry, positions: np.ndarray | None = None) -> np.ndarray:
    """Patches of ``x`` (N, C, *spatial) under the kernel, one row per output position.

    ``positions`` selects rows (flat indices into ``(N, *output)``); default all, built from a
    strided window view (one copy); a selection gathers only the chosen rows.
    """
    spatial = x.shape[2:]
    rank = len(spatial)
    out_size = geometry.output_size(spatial)
    pad_width = [(0, 0), (0, 0)] + [(b, e) for b, e in zip(geometry.pads_begin, geometry.pads_end)]
    padded = np.pad(x, pad_width) if any(geometry.pads_begin) or any(geometry.pads_end) else x
    channels = x.shape[1]
    if positions is None:
        span = [(k - 1) * d + 1 for k, d in zip(geometry.kernel, geometry.dilations)]
        windows = sliding_window_view(padded, span, axis=tuple(range(2, 2 + rank)))
        # [N, C, *out_full, *span] -> stride the output positions, dilate the window
        index = (slice(None), slice(None), *[slice(None, o * s, s) for o, s in zip(out_size, geometry.strides)],
                 *[slice(None, None, d) for d in geometry.dilations])
        # -> [N, *out, C, *kernel]
        order = (0, *range(2, 2 + rank), 1, *range(2 + rank, 2 + 2 * rank))
        return windows[index].transpose(order).reshape(-1, channels * math.prod(geometry.kernel))
    coords = np.unravel_index(positions, (x.shape[0], *out_size))
    rows = len(positions)
    # index arrays broadcast to (rows, C, k_1, ..., k_d)
    shape = (rows, channels, *geometry.kernel)
    index_arrays: list[np.ndarray] = [coords[0].reshape((rows,) + (1,) * (rank + 1)),
                                      np.arange(channels).reshape((1, channels) + (1,) * rank)]
    for i in range(rank):
        offsets = np.arange(geometry.kernel[i]) * geometry.dilations[i]
        view = [1] * (rank + 2)
        view[2 + i] = geometry.kernel[i]
        start = (coords[1 + i] * geometry.strides[i]).reshape((rows,) + (1,) * (rank + 1))
        index_arrays.append(start + offsets.reshape(view))
    patches = padded[tuple(np.broadcast_to(a, shape) for a in index_arrays)]
    return patches.reshape(rows, -1)


@dataclasses.dataclass
class Moments:
    """``gram = sum of x x^T`` over ``rows`` rows (float64), accumulated one block at a time."""

    gram: np.ndarray
    rows: int = 0

    @classmethod
    def zeros(cls, k: int) -> Moments:
        return cls(np.zeros((k, k), dtype=np.float64))

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
