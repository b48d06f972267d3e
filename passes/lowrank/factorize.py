"""The numerics of low-rank factorization: decompose, choose a rank, build the two factors.

All three methods have one form. With a K x K metric ``S`` (``S S^T`` a second moment of the
input rows), take the SVD ``S^T W = U diag(sigma) V^T`` and keep the top ``r`` right singular
vectors ``V_r`` (N x r). The factors are

    A = W V_r   (K x r),    B = V_r^T   (r x N),    W' = A B = W V_r V_r^T,

i.e. the layer's outputs are projected onto an r-dimensional subspace. ``W'`` is the best
rank-r approximation of ``W`` in the norm ``||S^T (W - W')||_F``:

- ``svd``: ``S = I``; plain truncated SVD (``A = U_r diag(sigma_r)``), the best for the weight
  error ``||W - W'||_F``, blind to the data.
- ``whitened``: ``S S^T = G / n + lambda I`` with ``G = X^T X`` over the ``n`` calibration rows
  and ``lambda = ridge * trace(G / n) / K``. For ``ridge = 0`` this minimizes the output error
  ``||X (W - W')||_F`` exactly (Eckart-Young on ``Y = X W``: ``V_r`` spans the top principal
  directions of the outputs). It is SVD-LLM's truncation-aware whitening, where
  ``W' = S^{-T} [S^T W]_r``; since ``[S^T W]_r = S^T W V_r V_r^T`` that equals ``W V_r V_r^T``,
  so neither a Cholesky factor nor an inverse is needed. ``S = Q diag(sqrt(l))`` from the
  eigendecomposition ``Q diag(l) Q^T`` of the (ridged) second moment, in float64, with
  eigenvalues clipped at 0: a singular ``G`` (dead ReLUs, fewer rows than K) cannot fail.
  When N <= K the same ``V`` comes from the N x N eigenproblem of ``W^T (G / n + lambda I) W``
  (cheaper than the K x K one).
- ``asvd``: ``S = diag(s)``, ``s_i = rms(x_i) ** alpha`` (activation-aware scaling as in ASVD,
  with the RMS from ``diag(G)``; channels never active get the smallest positive scale).

Rank selection, per layer, over ``r = 1 .. min(K, N)``:

- ``energy e``: the smallest r with ``sum(s[:r]^2) >= e * sum(s^2)``, ``s`` the singular values
  of ``W`` itself whatever the method: a property of the weights, so a given energy gives the
  same ranks with and without calibration data, and the data-aware methods then choose a
  better r-dimensional subspace. (The spectrum of ``S^T W`` would not do: the output energy of
  a layer is dominated by a few directions, the mean activation above all, so 90 % of it is
  often kept at rank 3 with a large error.)
- ``rank_ratio q``: ``r = ceil(q * min(K, N))``.
- ``max_error m``: the smallest r whose relative output error on the calibration rows,
  ``sqrt(trace(D^T G D) / trace(W^T G W))`` with ``D = W - W'``, is at most m. Because ``V`` is
  orthonormal this is ``sqrt(1 - sum_{i<=r} c_i / trace(W^T G W))`` with ``c_i = v_i^T W^T G W v_i``,
  so every rank's error comes from one pass.

Factoring pays only when ``r (K + N) < K N`` (fewer MACs per row and fewer weights): that is
checked by the caller. Everything is computed in float64; the factors are cast back to the
weight's dtype by the rewrite.

The decomposition runs with one BLAS thread (threadpoolctl): LAPACK gains little
from threads on layer-sized matrices, while OpenBLAS's spinning threads made them 5-20x slower
on a loaded 2-core machine (measured).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["Decomposition", "decompose", "select_rank", "saves"]


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """``W`` against a metric: right singular vectors and the errors of every rank.

    Attributes:
        right: V, N x m with m = min(K, N), orthonormal columns, most important first.
        sigma: the m singular values of ``S^T W``, descending.
        weight_sigma: the m singular values of ``W``, descending (the ``energy`` criterion).
        weight_error: relative weight error ``||W - W V_r V_r^T||_F / ||W||_F`` for r = 0 .. m.
        output_error: relative output error on the calibration rows for r = 0 .. m, when a
            second moment was given (else None).
    """

    weight: np.ndarray
    right: np.ndarray
    sigma: np.ndarray
    weight_sigma: np.ndarray
    weight_error: np.ndarray
    output_error: np.ndarray | None

    @property
    def full_rank(self) -> int:
        return int(self.sigma.shape[0])

    def energy_kept(self, rank: int) -> float:
        """Fraction of ``W``'s squared singular values in the top ``rank``."""
        squares = self.weight_sigma**2
        total = float(np.sum(squares))
        return 1.0 if total == 0 else float(np.sum(squares[:rank]) / total)

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(A, B) with ``A = W V_r`` (K x r) and ``B = V_r^T`` (r x N), float64."""
        v = self.right[:, :rank]
        return self.weight @ v, np.ascontiguousarray(v.T)


def _svd_right(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right singular vectors (N x m) and singular values of a K x N matrix, float64."""
    try:
        _, sigma, vt = np.linalg.svd(matrix, full_matrices=False)
    except np.linalg.LinAlgError:
        # gesdd can fail to converge on ill-conditioned input; the eigenvectors of M^T M are a
        # slower but robust route to the same subspace
        return _eig_right(matrix.T @ matrix, min(matrix.shape))
    return vt.T, sigma


def _eig_right(gram: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``count`` eigenvectors of a PSD matrix ``M^T M`` and the singular values of M."""
    eigenvalues, vectors = np.linalg.eigh((gram + gram.T) / 2)
    order = np.argsort(eigenvalues)[::-1][:count]
    return vectors[:, order], np.sqrt(np.clip(eigenvalues[order], 0.0, None))


def _right_vectors(
    w: np.ndarray, method: str, second_moment: np.ndarray | None, ridge: float, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """(V, singular values) of ``S^T W`` for the method (see the module docstring)."""
    k, n = w.shape
    if method == "svd":
        return _svd_right(w)
    if second_moment is None:
        raise ValueError(f"method {method!r} needs the input second moment")
    sym = (second_moment + second_moment.T) / 2
    if method == "asvd":
        rms = np.sqrt(np.clip(np.diag(sym), 0.0, None))
        positive = rms[rms > 0]
        floor = float(positive.min()) if positive.size else 1.0
        return _svd_right((np.maximum(rms, floor) ** alpha)[:, None] * w)
    if method == "whitened":
        scale = float(np.trace(sym)) / k
        lam = ridge * scale if scale > 0 else max(ridge, 1e-12)
        ridged = sym + lam * np.eye(k)
        if n <= k:
            # (S^T W)^T (S^T W) = W^T (G + lambda I) W: an N x N eigenproblem, cheaper than K x K
            return _eig_right(w.T @ (ridged @ w), min(k, n))
        # S^T = diag(sqrt(l)) Q^T from G + lambda I = Q diag(l) Q^T: never fails, even when singular
        eigenvalues, eigenvectors = np.linalg.eigh(ridged)
        root = np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None] * eigenvectors.T
        return _svd_right(root @ w)
    raise ValueError(f"unknown method {method!r}")


def decompose(
    weight: np.ndarray,
    *,
    method: str = "svd",
    second_moment: np.ndarray | None = None,
    ridge: float = 1e-3,
    alpha: float = 0.5,
) -> Decomposition:
    """Decompose ``weight`` (K x N) for ``method``; see the module docstring.

    ``second_moment`` is ``X^T X / n`` (K x K) of the layer's calibration rows; when given, the
    output error of every rank is measured against it whatever the method.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _decompose(np.asarray(weight, dtype=np.float64), method, second_moment, ridge, alpha)


def _decompose(
    w: np.ndarray, method: str, second_moment: np.ndarray | None, ridge: float, alpha: float
) -> Decomposition:
    right, sigma = _right_vectors(w, method, second_moment, ridge, alpha)
    weight_sigma = sigma if method == "svd" else np.linalg.svd(w, compute_uv=False)

    projected = w @ right  # K x m
    total_weight = float(np.sum(w * w))
    kept_weight = np.concatenate([[0.0], np.cumsum(np.sum(projected * projected, axis=0))])
    weight_error = np.sqrt(np.clip(total_weight - kept_weight, 0.0, None) / total_weight) if total_weight > 0 \
        else np.zeros(len(kept_weight))

    output_error = None
    if second_moment is not None:
        g = (second_moment + second_moment.T) / 2
        total_output = float(np.sum(w * (g @ w)))  # trace(W^T G W)
        captured = np.sum(projected * (g @ projected), axis=0)  # c_i = v_i^T W^T G W v_i
        kept_output = np.concatenate([[0.0], np.cumsum(captured)])
        if total_output > 0:
            output_error = np.sqrt(np.clip(total_output - kept_output, 0.0, None) / total_output)
        else:  # the layer's output is zero on every calibration row
            output_error = np.zeros(len(kept_output))
    return Decomposition(w, right, sigma, weight_sigma, weight_error, output_error)


def select_rank(decomposition: Decomposition, criterion: str, value: float) -> int:
    """The rank (>= 1) the criterion asks for; see the module docstring."""
    m = decomposition.full_rank
    if criterion == "rank_ratio":
        return max(1, min(m, math.ceil(value * m - 1e-9)))
    if criterion == "energy":
        squares = decomposition.weight_sigma**2
        total = float(np.sum(squares))
        if total == 0:
            return 1
        cumulative = np.cumsum(squares) / total
        return max(1, min(m, int(np.searchsorted(cumulative, value - 1e-12)) + 1))
    if criterion == "max_error":
        errors = decomposition.output_error
        if errors is None:
            raise ValueError("max_error needs the output error, measured on calibration data")
        fits = np.nonzero(errors[1:] <= value + 1e-12)[0]
        return int(fits[0]) + 1 if fits.size else m
    raise ValueError(f"unknown criterion {criterion!r}")


def saves(rank: int, k: int, n: int) -> bool:
    """Whether rank ``rank`` stores fewer weights and costs fewer MACs per row: ``r (K + N) < K N``."""
    return rank * (k + n) < k * n
