"""Second moments of each layer's input rows, ``G = X^T X``, streamed over calibration data.

For ``Y = X W`` the output error of any replacement ``W'`` on the calibration rows is
``||X (W - W')||_F^2 = trace((W - W')^T G (W - W'))``, so the K x K matrix ``G`` (and the number
of rows) is all the data-aware factorization and the error report need: activations are never
stored. The model runs once in ONNX Runtime with every needed input value exposed
(:func:`onnx_compress.runtime.activations.iter_activations`); each batch's rows are added to
``G`` in float64 and the batch is dropped. The rows, im2col and the accumulation are
:mod:`onnx_compress.passes.gram`'s (shared with pruning's reconstruction).

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

import logging
import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnx_compress.data import Dataset
from onnx_compress.errors import DataError
from onnx_compress.passes.gram import Moments, conv_attributes, im2col
from onnx_compress.passes.lowrank.targets import Target
from onnx_compress.runtime.activations import iter_activations
from onnx_compress.runtime.session import SessionSettings

__all__ = ["Moments", "collect_moments", "layer_rows"]

logger = logging.getLogger(__name__)

#: rows of a conv's patch matrix built at once (bounds the im2col copy to ~ this x K floats)
_PATCH_ROWS_PER_CHUNK = 16384


def layer_rows(target: Target, x: np.ndarray) -> list[np.ndarray]:
    """The rows of ``X`` for ``target`` from its input batch, in chunks of bounded size."""
    if target.kind == "conv":
        geometry = conv_attributes(target.node).resolve(x.shape[2:])
        out_positions = max(1, math.prod(geometry.output_size(x.shape[2:])))
        per_chunk = max(1, _PATCH_ROWS_PER_CHUNK // out_positions)
        return [im2col(x[i : i + per_chunk], geometry) for i in range(0, x.shape[0], per_chunk)]
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
    moments = {key: Moments.zeros(t.k) for key, t in by_key.items()}
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
