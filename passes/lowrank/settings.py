"""Settings of the low-rank pass: the rank criterion, the method, which layers to consider."""

from __future__ import annotations

import dataclasses
import math

from onnx_compress.errors import SettingError
from onnx_compress.passes.base import PassSettings

__all__ = ["LowRankSettings", "METHODS", "OP_TYPES", "DEFAULT_ENERGY"]

#: how W is decomposed; "auto" = "whitened" with calibration data, "svd" without
METHODS = ("auto", "svd", "whitened", "asvd")
#: the ops the pass can factor
OP_TYPES = ("MatMul", "Gemm", "Conv")
#: the criterion used when none of energy / rank_ratio / max_error is set
DEFAULT_ENERGY = 0.99


def _check_fraction(name: str, value: float | None, *, low_open: bool = True) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SettingError(f"{name} must be a number, got {value!r}")
    low_ok = value > 0 if low_open else value >= 0
    if not (low_ok and value <= 1):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise SettingError(f"{name} must be in {interval}, got {value}")


@dataclasses.dataclass(frozen=True)
class LowRankSettings(PassSettings):
    """Settings of :class:`~onnx_compress.passes.lowrank.LowRank`.

    Set at most one rank criterion; with none, ``energy`` = :data:`DEFAULT_ENERGY` (0.99).

    Attributes:
        energy: keep the smallest rank whose singular values hold this fraction of the squared
            singular values of ``W`` (a property of the weights: the same ranks with and without
            calibration data; the data-aware methods then keep more accuracy at that rank).
            In (0, 1].
        rank_ratio: keep ``ceil(rank_ratio * min(K, N))`` singular values. In (0, 1].
        max_error: keep the smallest rank whose relative output error
            ``||X W - X A B||_F / ||X W||_F`` on the calibration activations ``X`` is at most
            this. Needs calibration data. In [0, 1].
        method: ``svd`` (plain truncated SVD of ``W``), ``whitened`` (optimal for the
            calibration activations: SVD of ``S^T W`` with ``S S^T = X^T X / n + ridge``, as in
            SVD-LLM), ``asvd`` (SVD of ``diag(rms(x))^alpha W``, as in ASVD), or ``auto``
            (default: ``whitened`` when calibration data is given, else ``svd``).
        min_size: leave weights with fewer than this many elements alone (default 4096).
        op_types: which ops to factor (default all of MatMul, Gemm, Conv).
        exclude: node names to leave alone (the pipeline's back-off excludes sensitive layers).
        ridge: ``whitened`` adds ``ridge * trace(X^T X / n) / K`` to the diagonal of the
            activation second moment (default 1e-3). It blends the data-aware objective with
            plain SVD's weight error, so directions the calibration data never excites are not
            discarded blindly. 0 is allowed (pure calibration objective).
        asvd_alpha: the exponent of the ASVD channel scaling (default 0.5, the ASVD paper's).
        batch_size: calibration samples per ONNX Runtime call (default 32).
    """

    energy: float | None = None
    rank_ratio: float | None = None
    max_error: float | None = None
    method: str = "auto"
    min_size: int = 4096
    op_types: tuple[str, ...] = OP_TYPES
    exclude: tuple[str, ...] = ()
    ridge: float = 1e-3
    asvd_alpha: float = 0.5
    batch_size: int = 32

    def __post_init__(self) -> None:
        chosen = [name for name in ("energy", "rank_ratio", "max_error") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise SettingError(f"set only one of energy, rank_ratio, max_error; got {', '.join(chosen)}")
        _check_fraction("energy", self.energy)
        _check_fraction("rank_ratio", self.rank_ratio)
        _check_fraction("max_error", self.max_error, low_open=False)
        if self.method not in METHODS:
            raise SettingError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int) or self.min_size < 0:
            raise SettingError(f"min_size must be an integer >= 0, got {self.min_size!r}")
        unknown = [op for op in self.op_types if op not in OP_TYPES]
        if unknown or not self.op_types:
            raise SettingError(f"op_types must be a non-empty subset of {', '.join(OP_TYPES)}; got {list(self.op_types)}")
        if isinstance(self.exclude, str):
            raise SettingError(f"exclude must be a list of node names, got the string {self.exclude!r}")
        if not isinstance(self.ridge, (int, float)) or math.isnan(self.ridge) or self.ridge < 0:
            raise SettingError(f"ridge must be a number >= 0, got {self.ridge!r}")
        if not isinstance(self.asvd_alpha, (int, float)) or not 0 < self.asvd_alpha <= 2:
            raise SettingError(f"asvd_alpha must be in (0, 2], got {self.asvd_alpha!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SettingError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")

    @property
    def criterion(self) -> tuple[str, float]:
        """(name, value) of the rank criterion in force."""
        for name in ("energy", "rank_ratio", "max_error"):
            value = getattr(self, name)
            if value is not None:
                return name, float(value)
        return "energy", DEFAULT_ENERGY

    def describe_criterion(self) -> str:
        name, value = self.criterion
        return f"{name}={value:g}"

    def scaled(self, strength: float) -> LowRankSettings:
        """These settings made less aggressive: ``strength`` 1 keeps them, towards 0 keeps every rank.

        energy -> ``1 - (1 - energy) * strength``; rank_ratio -> ``1 - (1 - rank_ratio) * strength``;
        max_error -> ``max_error * strength``.
        """
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise SettingError(f"strength must be in (0, 1], got {strength!r}")
        name, value = self.criterion
        scaled = value * strength if name == "max_error" else 1 - (1 - value) * strength
        return dataclasses.replace(self, **{name: scaled})
