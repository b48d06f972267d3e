"""Low-rank factorization of MatMul, Gemm and Conv weights (the ``lowrank`` pass).

What
    A layer ``Y = X W (+ b)`` with a constant K x N weight becomes two, ``Y = (X A) B (+ b)``
    with ``A`` K x r and ``B`` r x N. A Conv with a ``C_out x C_in x k x k`` kernel becomes a
    k x k Conv to r channels (the node's strides, pads and dilations) and a 1x1 Conv to
    ``C_out`` (the spatial SVD of the kernel reshaped to ``C_out x (C_in k k)``). The bias stays
    on the second node. Per output row the MACs go from ``K N`` to ``r (K + N)``, and so do the
    weights: a layer is only factored when ``r (K + N) < K N``, else left alone with the reason.

Maths (``factorize.py``)
    ``W ~ W V_r V_r^T`` with ``V_r`` the top right singular vectors of ``S^T W``: ``S = I`` for
    plain SVD (``svd``), ``S S^T = X^T X / n + ridge`` for the data-aware ``whitened`` method
    (SVD-LLM's truncation-aware whitening; with no ridge, the rank-r ``W'`` that minimizes the
    output error ``||X W - X W'||_F`` on the calibration rows), or ``S = diag(rms(x))^alpha`` for
    ``asvd`` (ASVD's activation-aware scaling). Ranks per layer by ``energy`` (fraction of
    ``W``'s squared singular values kept: data-blind, so equal ranks with and without data),
    ``rank_ratio`` (of ``min(K, N)``) or ``max_error`` (relative output error on the calibration
    rows: the data-driven criterion). Computed in float64.

Data (``statistics.py``)
    With calibration data, the input model runs once in ONNX Runtime with each target's input
    exposed as an extra output; each batch's rows (Conv: im2col patches) are accumulated into
    ``X^T X`` and dropped. ``method="auto"`` (default) runs ``whitened`` with calibration data
    and ``svd`` without; the result says which ran. Every layer's report has its rank, params
    before/after, relative weight error and, with calibration data, the measured relative output
    error on the calibration rows.

Limits
    Only nodes of the main graph; only constant, unshared, floating-point initializer weights
    (run ``Normalize`` first); Conv with ``group = 1`` only; MatMul with the constant on the right
    only. Calibration statistics are those of the unmodified model (layers are not re-calibrated
    on the outputs of earlier factored layers), and padding positions of sequence models count
    like real tokens. Pretrained transformer weights are close to full rank: plain SVD saves
    little there at any useful fidelity; the data-aware methods keep more at the same rank.
    Fewer MACs do not always mean lower latency (two small GEMMs instead of one large one):
    benchmark the result.
"""

from onnx_compress.passes.lowrank.lowrank_pass import LowRank, LowRankLayer, LowRankResult
from onnx_compress.passes.lowrank.settings import DEFAULT_ENERGY, LowRankSettings

__all__ = ["DEFAULT_ENERGY", "LowRank", "LowRankLayer", "LowRankResult", "LowRankSettings"]
