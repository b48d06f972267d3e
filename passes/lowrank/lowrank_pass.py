"""The LowRank pass: find layers, gather calibration statistics, choose ranks, rewrite, report."""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import onnx
import onnx_ir as ir

from onnx_compress.errors import PassRefusedError, one_line
from onnx_compress.model_io import check_model
from onnx_compress.passes.base import CompressionPass, CompressionResult
from onnx_compress.passes.lowrank.factorize import decompose, saves, select_rank
from onnx_compress.passes.lowrank.rewrite import NameScope, factor_node
from onnx_compress.passes.lowrank.settings import LowRankSettings
from onnx_compress.passes.lowrank.statistics import collect_moments
from onnx_compress.passes.lowrank.targets import Skipped, find_targets
from onnx_compress.runtime.session import SessionSettings
from onnx_compress.stats import count_params
from onnx_compress.table import format_table

__all__ = ["LowRank", "LowRankResult", "LowRankLayer"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LowRankLayer:
    """What happened to one layer.

    Attributes:
        node: the node's name.
        op_type: MatMul, Gemm or Conv.
        weight: the weight initializer's name.
        shape: (K, N) of the weight seen as ``Y = X W`` (Conv: ``(C_in k1 ... kd, C_out)``);
            None when the node was not analysed.
        factored: whether the node was replaced by two.
        reason: why it was left alone ("" when factored).
        rank: the chosen rank (also reported when the rank did not pay off).
        full_rank: ``min(K, N)``.
        max_saving_rank: the largest rank that still saves MACs and bytes (``r (K + N) < K N``).
        params_before: ``K N``; params_after: ``r (K + N)`` when factored, else ``K N``.
        energy_kept: fraction of ``W``'s squared singular values in the top ``rank``.
        weight_error: ``||W - A B||_F / ||W||_F`` at the chosen rank.
        output_error: ``||X W - X A B||_F / ||X W||_F`` on the calibration rows (None without
            calibration data); the bias, unchanged, is not part of it.
    """

    node: str
    op_type: str
    weight: str
    shape: tuple[int, int] | None
    factored: bool
    reason: str = ""
    rank: int | None = None
    full_rank: int | None = None
    max_saving_rank: int | None = None
    params_before: int = 0
    params_after: int = 0
    energy_kept: float | None = None
    weight_error: float | None = None
    output_error: float | None = None

    @classmethod
    def skipped(cls, item: Skipped) -> LowRankLayer:
        return cls(node=item.node, op_type=item.op_type, weight=item.weight, shape=None, factored=False,
                   reason=item.reason)


@dataclasses.dataclass
class LowRankResult(CompressionResult):
    """What the low-rank pass did.

    Attributes:
        method: the decomposition that ran: ``svd`` (plain, data-blind), ``whitened`` or
            ``asvd`` (data-aware).
        criterion: the rank criterion, e.g. ``energy=0.95``.
        calibration_samples: samples of calibration data used (0 without data).
        layers: one :class:`LowRankLayer` per MatMul/Gemm/Conv node considered.
        params_before / params_after: the model's parameter count before and after.
    """

    method: str = ""
    criterion: str = ""
    calibration_samples: int = 0
    layers: list[LowRankLayer] = dataclasses.field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    @property
    def factored(self) -> list[LowRankLayer]:
        return [layer for layer in self.layers if layer.factored]

    @property
    def left_alone(self) -> list[LowRankLayer]:
        return [layer for layer in self.layers if not layer.factored]

    def summary(self) -> str:
        done = self.factored
        text = (f"factored {len(done)} of {len(self.layers)} layers ({self.method}, {self.criterion}); "
                f"params {self.params_before:,} -> {self.params_after:,}")
        errors = [layer.output_error for layer in done if layer.output_error is not None]
        if errors:
            text += f"; calibration output error per layer max {max(errors):.3g}"
        return text

    def lines(self) -> list[str]:
        """The human-readable report ("" = blank line): layers factored (shape, rank, parameters,
        weight and calibration output error), layers left alone and why, the summary, the method."""

        def error(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        factored = [[layer.node, layer.op_type, f"{layer.shape[0]}x{layer.shape[1]}", layer.rank, layer.params_before,
                     layer.params_after, error(layer.weight_error), error(layer.output_error)]
                    for layer in self.factored if layer.shape is not None]
        out: list[str] = []
        if factored:
            out += [format_table(["factored", "op", "K x N", "rank", "params", "after", "weight err", "output err"],
                                 factored), ""]
        if self.left_alone:
            out += ["left alone:", *(f"  {layer.node} ({layer.op_type}): {layer.reason}" for layer in self.left_alone), ""]
        samples = f" on {self.calibration_samples} calibration samples" if self.calibration_samples else ""
        return out + [self.summary(), f"method {self.method}{samples}"]


class LowRank(CompressionPass):
    """Low-rank factorization of MatMul, Gemm and Conv weights; see the package docstring."""

    name: ClassVar[str] = "lowrank"
    Settings = LowRankSettings
    settings: LowRankSettings

    def scaled(self, strength: float) -> LowRank:
        """The same pass with a milder criterion (see :meth:`LowRankSettings.scaled`); data kept."""
        return self.with_settings(self.settings.scaled(strength))

    def resolved_method(self) -> str:
        method = self.settings.method
        if method == "auto":
            return "whitened" if self.calibration is not None else "svd"
        return method

    def _check_data(self, method: str) -> None:
        criterion, _ = self.settings.criterion
        if self.calibration is None and method in ("whitened", "asvd"):
            raise PassRefusedError(
                f"low-rank method {method!r} is data-aware and needs calibration data "
                "(calibration=... in Python, --data on the command line), or use method 'svd'"
            )
        if self.calibration is None and criterion == "max_error":
            raise PassRefusedError(
                "low-rank max_error is a relative output error measured on calibration activations: "
                "give calibration data (calibration=..., --data), or choose energy / rank_ratio"
            )

    def call(self, model: ir.Model) -> LowRankResult:
        settings = self.settings
        method = self.resolved_method()
        self._check_data(method)
        criterion, value = settings.criterion
        work = self.copy_model(model)
        graph = work.graph
        targets, skipped = find_targets(graph, settings, opset=work.opset_imports.get("", 18))
        reports = [LowRankLayer.skipped(item) for item in skipped]

        moments = {}
        if self.calibration is not None and targets:
            # statistics of the unmodified input model; the copy keeps value names, so the targets'
            # input names, attributes and weight shapes hold for it too
            moments = collect_moments(model, targets, self.calibration,
                                      batch_size=settings.batch_size, settings=SessionSettings(provider="cpu"))

        scope = NameScope(graph)
        for target in targets:
            stats = moments.get(target.statistics_key())
            second_moment = stats.mean if stats is not None else None
            decomposition = decompose(target.matrix(), method=method, second_moment=second_moment,
                                      ridge=settings.ridge, alpha=settings.asvd_alpha)
            rank = select_rank(decomposition, criterion, value)
            k, n = target.k, target.n
            max_saving = (k * n - 1) // (k + n)
            common = dict(
                node=target.name, op_type=target.node.op_type, weight=str(target.weight.name), shape=(k, n),
                rank=rank, full_rank=decomposition.full_rank, max_saving_rank=max_saving,
                params_before=k * n, energy_kept=decomposition.energy_kept(rank),
                weight_error=float(decomposition.weight_error[rank]),
                output_error=None if decomposition.output_error is None else float(decomposition.output_error[rank]),
            )
            if not saves(rank, k, n):
                reports.append(LowRankLayer(
                    factored=False, params_after=k * n,
                    reason=(f"{settings.describe_criterion()} needs rank {rank}; only ranks up to {max_saving} "
                            f"save MACs and bytes for a {k}x{n} weight (r (K+N) < K N)"),
                    **common))  # type: ignore[arg-type]
                continue
            a, b = decomposition.factors(rank)
            factor_node(graph, target, a, b, scope)
            reports.append(LowRankLayer(factored=True, params_after=rank * (k + n), **common))  # type: ignore[arg-type]

        order = {str(node.name or node.outputs[0].name): i for i, node in enumerate(model.graph)}
        layers = sorted(reports, key=lambda r: order.get(r.node, len(order)))
        modified = any(layer.factored for layer in layers)
        if modified:
            _check_structure(work, model)
        result = LowRankResult(
            model=work,
            modified=modified,
            method=method,
            criterion=settings.describe_criterion(),
            calibration_samples=0 if self.calibration is None else len(self.calibration),
            layers=layers,
            params_before=count_params(model),
            params_after=count_params(work),
        )
        logger.info("lowrank: %s", result.summary())
        return result


def _check_structure(model: ir.Model, original: ir.Model) -> None:
    """onnx.checker on the rewritten model: never hand over a broken graph. When the input
    already fails the checker (an unknown op, a bad attribute), the pass refuses it with the
    checker's reason; otherwise the failure is a bug in the rewrite."""
    try:
        check_model(model)
    except onnx.checker.ValidationError as exc:
        try:
            check_model(original)
        except onnx.checker.ValidationError as input_exc:
            raise PassRefusedError(f"the input model fails onnx.checker: {one_line(input_exc)}") from input_exc
        raise RuntimeError(f"the factored model fails onnx.checker: {one_line(exc)}") from exc
