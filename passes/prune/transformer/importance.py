"""Importance of attention heads and FFN neurons.

``contribution`` (default; needs calibration data): what each unit adds to the residual stream,
measured on the calibration data. Head ``h`` of a block with output projection ``W_o``::

    score_h = sqrt( sum_t m_t * || c_t[h] @ W_o[h] ||^2 )

where ``c_t[h]`` is the head's context vector at token ``t`` (the output projection's input,
columns ``h*d .. h*d+d-1``), ``W_o[h]`` the matching rows and ``m_t`` the attention mask (padded
tokens do not count). FFN neuron ``j`` with activation ``a_tj`` and down-projection row
``W_d[j]``: ``score_j = sqrt(sum_t m_t a_tj^2) * ||W_d[j]||``, the Frobenius norm of its exact
rank-one contribution. One pass over the data reads every block's inputs at once.

``magnitude`` (no data): head ``h``: ``||W_v[:, h]|| * ||W_o[h]||`` (value and output weights of
the head); neuron ``j``: ``||W_u[:, j]|| * ||W_d[j]||``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnx_compress.data import Dataset
from onnx_compress.passes.prune.transformer.detect import EncoderLayer
from onnx_compress.passes.prune.transformer.layers import token_mask

__all__ = ["IMPORTANCE", "unit_scores"]

IMPORTANCE = ("contribution", "magnitude")


def _weight(value: ir.Value) -> np.ndarray:
    return np.asarray(value.const_value.numpy(), np.float64)  # type: ignore[union-attr]


def _magnitude(layers: Sequence[EncoderLayer]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    heads: dict[int, np.ndarray] = {}
    ffn: dict[int, np.ndarray] = {}
    for layer in layers:
        if layer.attention is not None:
            block = layer.attention
            v = _weight(block.v.weight).reshape(-1, block.heads, block.head_dim)
            o = _weight(block.o.weight).reshape(block.heads, block.head_dim, -1)
            heads[layer.index] = np.sqrt((v ** 2).sum((0, 2))) * np.sqrt((o ** 2).sum((1, 2)))
        if layer.ffn is not None:
            up, down = _weight(layer.ffn.up.weight), _weight(layer.ffn.down.weight)
            ffn[layer.index] = np.linalg.norm(up, axis=0) * np.linalg.norm(down, axis=1)
    return heads, ffn


def unit_scores(model: ir.Model, layers: Sequence[EncoderLayer], method: str, data: Dataset | None,
                batch_size: int = 16) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """``(head scores, neuron scores)`` per layer index (higher = more important)."""
    if method == "magnitude" or data is None:
        return _magnitude(layers)
    from onnx_compress.runtime.activations import iter_activations

    names: list[str] = []
    for layer in layers:
        if layer.attention is not None:
            names.append(str(layer.attention.o.input.name))
        if layer.ffn is not None:
            names.append(str(layer.ffn.down.input.name))
    names = list(dict.fromkeys(names))
    head_sq = {layer.index: np.zeros(layer.attention.heads) for layer in layers if layer.attention is not None}
    ffn_sq = {layer.index: np.zeros(layer.ffn.width) for layer in layers if layer.ffn is not None}
    for batch, values in zip(data.batches(batch_size), iter_activations(model, names, data, batch_size=batch_size)):
        mask = token_mask(Dataset(batch))
        for layer in layers:
            if layer.attention is not None:
                block = layer.attention
                context = np.asarray(values[str(block.o.input.name)], np.float32)
                rows = context.reshape(-1, block.heads, block.head_dim)
                weights = _row_weights(mask, rows.shape[0])
                w_o = np.asarray(block.o.weight.const_value.numpy(), np.float32)  # type: ignore[union-attr]
                out = np.matmul(rows.transpose(1, 0, 2), w_o.reshape(block.heads, block.head_dim, -1))  # H x N x D
                head_sq[layer.index] += ((out.astype(np.float64) ** 2).sum(2) @ weights)
            if layer.ffn is not None:
                act = np.asarray(values[str(layer.ffn.down.input.name)], np.float64)
                rows = act.reshape(-1, act.shape[-1])
                weights = _row_weights(mask, rows.shape[0])
                ffn_sq[layer.index] += (weights[:, None] * rows ** 2).sum(0)
    heads = {i: np.sqrt(v) for i, v in head_sq.items()}
    ffn = {}
    for layer in layers:
        if layer.ffn is not None:
            ffn[layer.index] = np.sqrt(ffn_sq[layer.index]) * np.linalg.norm(_weight(layer.ffn.down.weight), axis=1)
    return heads, ffn


def _row_weights(mask: np.ndarray | None, rows: int) -> np.ndarray:
    if mask is not None and mask.size == rows:
        return mask.reshape(-1).astype(np.float64)
    return np.ones(rows)
