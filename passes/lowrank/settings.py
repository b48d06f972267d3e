"""Settings of the low-rank pass: the rank criterion, the method, which layers to consider."""

from __future__ import annotations

import dataclasses

from onnx_compress.errors import SettingError
from onnx_compress.passes.base import PassSettings, check_strength
from onnx_compress.setting import SEARCHED, setting

__all__ = ["LowRankSettings", "METHODS", "OP_TYPES", "DEFAULT_ENERGY"]

#: how W is decomposed; "auto" = "whitened" with calibration data, "svd" without
METHODS = ("auto", "svd", "whitened", "asvd")
#: the ops the pass can factor
OP_TYPES = ("MatMul", "Gemm", "Conv")
#: the criterion used when none of energy / rank_ratio / max_error is set
DEFAULT_ENERGY = 0.99


@dataclasses.dataclass(frozen=True)
class LowRankSettings(PassSettings):
    """Settings of :class:`~onnx_compress.passes.lowrank.LowRank` (help texts: the declarations below).

    Set at most one rank criterion (energy, rank_ratio, max_error); with none, ``energy`` =
    :data:`DEFAULT_ENERGY` (0.99).
    """

    energy: float | None = setting(None, kind="float", range="(0, 1]", metavar="E", role=SEARCHED, help="""
        keep per layer the smallest rank whose singular values hold this fraction of the squared
        singular values of W (0.90 .. 0.99 typical; a property of the weights: the same ranks with
        and without calibration data, the data-aware methods then keep more accuracy at that rank)""")
    rank_ratio: float | None = setting(None, kind="float", range="(0, 1]", metavar="R", role=SEARCHED,
                                       help="keep ceil(rank_ratio * min(K, N)) singular values per layer")
    max_error: float | None = setting(None, kind="float", range="[0, 1]", metavar="X", role=SEARCHED, help="""
        keep per layer the smallest rank whose relative output error ||XW - XAB|| / ||XW|| on the
        calibration activations X is at most this (needs calibration data)""")
    method: str = setting("auto", choices=METHODS, help="""
        svd (plain truncated SVD of W), whitened (optimal for the calibration activations: SVD of
        S^T W with S S^T = X^T X / n + ridge, as in SVD-LLM), asvd (SVD of diag(rms(x))^alpha W,
        as in ASVD), or auto (default: whitened with calibration data, else svd)""")
    min_size: int = setting(4096, range=">= 0", metavar="N",
                            help="leave weights with fewer than this many elements alone")
    op_types: tuple[str, ...] = setting(OP_TYPES, choices=OP_TYPES, cli=False, help="which ops to factor")
    exclude: tuple[str, ...] = setting((), metavar="NODE", help="""
        node names to leave alone (the pipeline's back-off excludes sensitive layers)""")
    ridge: float = setting(1e-3, range=">= 0", cli=False, help="""
        whitened adds ridge * trace(X^T X / n) / K to the diagonal of the activation second moment:
        it blends the data-aware objective with plain SVD's weight error, so directions the
        calibration data never excites are not discarded blindly; 0: the pure calibration objective""")
    asvd_alpha: float = setting(0.5, range="(0, 2]", cli=False,
                                help="the exponent of the ASVD channel scaling (the ASVD paper's 0.5)")
    batch_size: int = setting(32, range=">= 1", metavar="N", help="calibration samples per ONNX Runtime call")

    def __post_init__(self) -> None:
        super().__post_init__()
        chosen = [name for name in ("energy", "rank_ratio", "max_error") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise SettingError(f"set only one of energy, rank_ratio, max_error; got {', '.join(chosen)}")
        if not self.op_types:
            raise SettingError(f"op_types must be a non-empty subset of {', '.join(OP_TYPES)}; got []")

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
        check_strength(strength)
        name, value = self.criterion
        scaled = value * strength if name == "max_error" else 1 - (1 - value) * strength
        return dataclasses.replace(self, **{name: scaled})
