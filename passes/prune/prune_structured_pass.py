"""Structured pruning: remove whole channels and neurons, so the model gets smaller AND faster.

Steps (each in its own module, as Torch-Pruning's DepGraph keeps them apart):

1. coupling (:mod:`.coupling`, :mod:`.rules`): the groups of channel axes that must be cut
   together, and the units inside each group;
2. importance (:mod:`.importance`): a score per unit (``l1``, ``l2``, ``bn`` or
   ``activation`` on calibration data);
3. schedule (:mod:`.schedule`): how many units each group loses (``ratio`` per group or
   ranked globally, kept widths rounded up to ``round_to``, ``max_ratio`` per group in global
   scope), the lowest-scored first; every cut axis keeps at least one index;
4. slicing (:mod:`.slicers`): initializers sliced, shapes and channel-naming attributes fixed;
5. verification (:mod:`.verify`): ``onnx.checker`` (full check) and an ONNX Runtime run with
   the original output names, dtypes and shapes. A cut that fails verification is retried
   group by group; groups that still fail are left untouched with the reason;
6. reconstruction (:mod:`.reconstruct`, only with ``reconstruct=True`` and calibration data):
   the layers whose input channels were cut are re-fitted by least squares, layer by layer,
   so that their outputs match the original model's on the calibration data.

What is never cut: model inputs and outputs (so the model keeps its interface), the nodes
named in ``protect`` (their weights stay whole), and any group the coupling analysis does not
fully understand (reported with the reason). Pruning changes the function: cut channels are
gone, not zeroed; reconstruct, fine-tune afterwards, or prune less when accuracy drops too far. Channels
whose weights are all zero (and whose bias is zero) are removed exactly.

Limits: the main graph only (weight layers inside If / Loop / Scan bodies are reported as
untouched, with the reason); channel axes with static sizes; attention heads (a Reshape that
splits the hidden axis) and axes normalized by LayerNormalization are not cut.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnx_compress.errors import PassRefusedError, SettingError
from onnx_compress.passes.base import CompressionPass, PassSettings, check_strength
from onnx_compress.passes.prune.coupling import AxisNode, CouplingAnalysis, Group, analyze
from onnx_compress.passes.prune.relations import Role
from onnx_compress.passes.prune.importance import (
    IMPORTANCE_METHODS,
    activation_probes,
    collect_activation_means,
    score_group,
)
from onnx_compress.passes.prune.reconstruct import LayerReconstruction, reconstruct
from onnx_compress.passes.prune.result import CutResult
from onnx_compress.passes.prune.schedule import GroupBudget, plan_cuts
from onnx_compress.passes.prune.slicers import apply_cuts
from onnx_compress.passes.prune.verify import Probe, check_pruned, make_probe
from onnx_compress.runtime.cpu import detect_cpu
from onnx_compress.setting import SEARCHED, setting
from onnx_compress.stats import count_macs, count_params
from onnx_compress.table import format_table

__all__ = ["GroupReport", "LayerReconstruction", "PruneStructured", "PruneStructuredResult",
           "PruneStructuredSettings"]

logger = logging.getLogger(__name__)

SCOPES = ("layer", "global")

#: kept indices of every cut initializer axis: {initializer name: {axis: indices}}
Kept = dict[str, dict[int, np.ndarray]]


def _ratio_ok(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


@dataclasses.dataclass(frozen=True)
class PruneStructuredSettings(PassSettings):
    """Settings of :class:`PruneStructured` (each field's help text is its declaration below)."""

    ratio: float = setting(0.5, range="[0, 1)", flag="--structured", metavar="R", role=SEARCHED, help="""
        fraction of the prunable units (channels, neurons) of every coupled group to remove; in
        layer scope every group loses this fraction, in global scope this fraction of all
        prunable units goes, the least important first""")
    scope: str = setting("layer", choices=SCOPES, help="""
        layer: every group (layer) loses the ratio (default); global: one ranking across groups""")
    importance: str = setting("l2", choices=IMPORTANCE_METHODS, help="""
        how channels are ranked: weight L2 norm (default; on the seed CNNs at ratio 0.5 it kept
        95-96 % test top-1 where l1 kept 92-94 %), L1 norm, BatchNorm scale (bn) or activation
        statistics on the calibration data (activation)""")
    round_to: int | str = setting(1, kind="int", range=">= 1", words=("auto",), metavar="N|auto", help="""
        round kept widths up to a multiple of N (default 1), or auto: the channel block of ONNX
        Runtime's convolution kernels on this CPU (16 with AVX-512, 8 with AVX2); odd widths are
        padded up to the block at run time, so they save bytes but little time""")
    protect: tuple[str, ...] = setting((), metavar="NODE", help="names of nodes that must stay unchanged")
    layer_ratios: tuple[tuple[str, float], ...] = setting((), kind="any", cli=False, help="""
        per-node ratios {node name: ratio}; a group takes the smallest ratio named for its
        producers, other groups use ratio""")
    max_ratio: float = setting(0.9, range="(0, 1)", cli=False,
                               help="in global scope, the largest fraction one group may lose")
    calibration_samples: int = setting(256, range=">= 1", cli=False, help="""
        samples of calibration data used for activation statistics and for reconstruction""")
    reconstruct: bool = setting(False, help="""
        after cutting, re-fit the weights (and bias) of every layer whose input channels were cut
        so that its output matches the original model's on the calibration data (ridge least
        squares, layer by layer, kept only where it lowers the held-out output error); needs
        calibration data""")
    reconstruct_rows: int = setting(20000, range=">= 1", cli=False, help="""
        rows (samples x output positions) per layer for reconstruction, at most (Conv rows are
        subsampled with a fixed seed)""")
    reconstruct_ridge: float = setting(0.01, range="> 0", cli=False, help="""
        reconstruction's ridge strength relative to the mean eigenvalue of the layer's input
        covariance; the fit is shrunk towards the pruned weights""")

    def __post_init__(self) -> None:
        super().__post_init__()
        pairs = self.layer_ratios.items() if isinstance(self.layer_ratios, Mapping) else self.layer_ratios
        try:
            normalized = tuple(sorted((str(name), ratio) for name, ratio in pairs))
        except (TypeError, ValueError):
            raise SettingError(f"layer_ratios must map node names to ratios, got {self.layer_ratios!r}") from None
        for name, ratio in normalized:
            if not _ratio_ok(ratio):
                raise SettingError(f"layer_ratios[{name!r}] must be in [0, 1), got {ratio!r}")
        object.__setattr__(self, "layer_ratios", normalized)


@dataclasses.dataclass
class GroupReport:
    """What happened to one coupled group.

    ``status``: ``pruned`` (units removed), ``kept`` (nothing to remove at this ratio) or
    ``untouched`` (refused, see ``reason``). ``units_*`` count the group's units;
    ``widths`` gives each producer's output channels ``(before, after)``.
    """

    name: str
    status: str
    units_before: int
    units_after: int
    widths: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    importance: str = ""
    reason: str = ""


_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _subgraph_reports(model: ir.Model) -> list[GroupReport]:
    """One ``untouched`` report per weight layer inside an If / Loop / Scan body (never cut)."""
    reports: list[GroupReport] = []
    for anchor in model.graph:
        for attr in anchor.attributes.values():
            bodies = [attr.as_graph()] if attr.type == ir.AttributeType.GRAPH else \
                list(attr.as_graphs()) if attr.type == ir.AttributeType.GRAPHS else []
            for body in bodies:
                for node in ir.traversal.RecursiveGraphIterator(body):
                    weight = node.inputs[1] if node.op_type in _LAYER_OPS and len(node.inputs) > 1 else None
                    if weight is None or weight.const_value is None:
                        continue
                    reports.append(GroupReport(
                        name=str(node.name), status="untouched", units_before=0, units_after=0,
                        reason=f"inside the body of {anchor.op_type} '{anchor.name}': structured pruning cuts "
                               "channels of the main graph only (unstructured pruning and dynamic int8 reach "
                               "subgraphs)"))
    return reports


@dataclasses.dataclass
class PruneStructuredResult(CutResult):
    """What structured pruning did, group by group."""

    groups: list[GroupReport] = dataclasses.field(default_factory=list)

    @property
    def refit(self) -> list[LayerReconstruction]:
        return [layer for layer in self.reconstruction if layer.status == "refit"]

    @property
    def untouched(self) -> list[GroupReport]:
        return [g for g in self.groups if g.status == "untouched"]

    @property
    def pruned(self) -> list[GroupReport]:
        return [g for g in self.groups if g.status == "pruned"]

    def summary(self) -> str:
        text = f"{len(self.pruned)} of {len(self.groups)} channel groups cut; {self.counts_text()}"
        if self.untouched:
            text += f"; {len(self.untouched)} left untouched"
        if self.reconstruction:
            text += f"; {len(self.refit)} of {len(self.reconstruction)} layers reconstructed"
        return text

    def lines(self) -> list[str]:
        """The human-readable report ("" = blank line): groups cut, layers reconstructed, groups
        left untouched with the reason, notes."""
        out: list[str] = []
        cut = [[g.name, ", ".join(f"{b} -> {a}" for b, a in g.widths.values()), g.importance] for g in self.pruned]
        if cut:
            out += ["", format_table(["cut group (producers)", "output channels", "importance"], cut)]
        if self.reconstruction:
            def error(value: float | None) -> str:
                return "" if value is None else f"{value:.4f}"

            refit = [[layer.node, layer.status, f"{layer.rows:,}" if layer.rows else "", error(layer.error_before),
                      error(layer.error_after), layer.reason] for layer in self.reconstruction]
            out += ["", format_table(["reconstructed layer", "status", "rows", "output error before", "after", "note"],
                                     refit)]
        if self.untouched:
            out += ["", "left untouched (group: reason):", *(f"  {g.name}: {g.reason}" for g in self.untouched)]
        return out + [f"note: {note}" for note in self.notes]


class PruneStructured(CompressionPass):
    """Remove channels/neurons and everything coupled to them; see the module docstring."""

    name = "prune_structured"
    Settings = PruneStructuredSettings
    settings: PruneStructuredSettings

    def scaled(self, strength: float) -> PruneStructured:
        check_strength(strength)
        return self.with_settings(dataclasses.replace(
            self.settings, ratio=self.settings.ratio * strength,
            layer_ratios=tuple((name, ratio * strength) for name, ratio in self.settings.layer_ratios)))

    def refinement_keys(self, model: ir.Model) -> list[str]:
        """One producer per prunable group, in graph order: the budget search may cut each group
        at full ratio on its own (``onnx_compress.budget.refine``)."""
        _, analysis = self._analyzed(model)
        keys: list[str] = []
        for group in analysis.groups:
            names = [str(node.name) for node in group.producers if node.name]
            if names and not group.blocked and len(group.prunable_units):
                keys.append(names[0])
        order = {str(node.name): i for i, node in enumerate(model.graph)}
        return sorted(keys, key=lambda name: order.get(name, len(order)))

    def refined(self, strength: float, full: tuple[str, ...]) -> PruneStructured:
        """This pass at ``strength``, except that the groups of the layers in ``full`` get their
        full ratio (a group takes the smallest ratio named for its producers)."""
        scaled = self if strength == 1.0 else self.scaled(strength)
        ratios = dict(scaled.settings.layer_ratios)
        own = dict(self.settings.layer_ratios)
        ratios.update({name: own.get(name, self.settings.ratio) for name in full})
        settings = dataclasses.replace(scaled.settings, layer_ratios=tuple(sorted(ratios.items())))
        return type(self)(settings, calibration=self.calibration, validation=self.validation)

    # ---------------------------------------------------------------- analysis

    def _analyzed(self, model: ir.Model) -> tuple[ir.Model, CouplingAnalysis]:
        work = self.copy_model(model)
        common_passes.ShapeInferencePass(strict_mode=False)(work)
        return work, analyze(work, self.settings.protect)

    def _check_names(self, model: ir.Model) -> None:
        names = {str(node.name) for node in model.graph}
        for setting, given in (("protect", self.settings.protect),
                               ("layer_ratios", [n for n, _ in self.settings.layer_ratios])):
            unknown = [n for n in given if n not in names]
            if unknown:
                weighted = [str(n.name) for n in model.graph if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
                raise SettingError(f"{setting}: no node named {unknown} in the model; weighted nodes: "
                                   f"{', '.join(weighted[:20])}{' ...' if len(weighted) > 20 else ''}")

    def _group_ratio(self, group: Group) -> float | None:
        ratios = dict(self.settings.layer_ratios)
        named = [ratios[str(node.name)] for node in group.producers if str(node.name) in ratios]
        return min(named) if named else None

    # ---------------------------------------------------------------- call

    def call(self, model: ir.Model) -> PruneStructuredResult:
        settings = self.settings
        self._check_names(model)
        if settings.reconstruct and self.calibration is None:
            raise PassRefusedError("reconstruct needs calibration data (the original layer outputs to match): "
                                   "pass calibration=... (CLI: --data calib.npz)")
        work, analysis = self._analyzed(model)
        params_before = count_params(work)
        macs_before, _ = count_macs(work)

        means = None
        prunable = [g for g in analysis.groups if len(g.prunable_units)]
        if settings.importance == "activation" and prunable:
            if self.calibration is None:
                raise PassRefusedError("importance 'activation' needs calibration data: pass calibration=...")
            means = collect_activation_means(work, activation_probes(prunable), self.calibration,
                                             max_samples=settings.calibration_samples)

        reports: dict[int, GroupReport] = {}
        budgets: list[GroupBudget] = []
        scores: dict[int, np.ndarray] = {}
        notes: list[str] = []
        for group in analysis.groups:
            report = GroupReport(name=group.name, status="kept", units_before=group.n_units,
                                 units_after=group.n_units, widths=_widths(group, None))
            reports[group.id] = report
            if group.blocked:
                report.status, report.reason = "untouched", "; ".join(group.blocked[:3])
                continue
            if not len(group.prunable_units):
                report.status, report.reason = "untouched", "; ".join(group.fixed_reasons[:3])
                continue
            unit_scores = score_group(group, settings.importance, means)
            report.importance = unit_scores.method
            if unit_scores.note:
                notes.append(f"{group.name}: {unit_scores.note}")
            candidates = np.array([u for u in group.prunable_units if np.isfinite(unit_scores.scores[u])], dtype=np.int64)
            if not len(candidates):
                report.status, report.reason = "untouched", "no weight scores these channels"
                continue
            scores[group.id] = unit_scores.scores
            budgets.append(GroupBudget(group.id, group.n_units, candidates, unit_scores.scores,
                                       self._group_ratio(group)))

        round_to = settings.round_to
        if round_to == "auto":
            round_to, why = detect_cpu().channel_multiple()
            notes.append(f"round_to auto = {round_to}: {why}")
        cuts = plan_cuts(budgets, ratio=settings.ratio, scope=settings.scope, round_to=int(round_to),
                         max_ratio=settings.max_ratio)
        cuts = {gid: _keep_every_axis(analysis.groups[gid], units, scores[gid])
                for gid, units in cuts.items() if len(units)}
        cuts = {gid: units for gid, units in cuts.items() if len(units)}

        result_model = work
        layers: list[LayerReconstruction] = []
        if cuts:
            probe = make_probe(work, self.calibration)
            if probe.note:
                notes.append(probe.note)
            result_model, cuts, kept = self._cut_verified(model, cuts, probe, reports)
            if cuts and settings.reconstruct and self.calibration is not None:
                layers = reconstruct(work, result_model, kept, self.calibration.take(settings.calibration_samples),
                                     ridge=settings.reconstruct_ridge, max_rows=settings.reconstruct_rows)
        for gid, units in cuts.items():
            group = analysis.groups[gid]
            report = reports[gid]
            report.status = "pruned"
            report.units_after = group.n_units - len(units)
            report.widths = _widths(group, units)
        modified = bool(cuts)
        if modified and settings.round_to == 1:
            odd = sorted({after for gid in cuts for node_name, (_, after) in reports[gid].widths.items()
                          if after % 16 and _is_conv(analysis.groups[gid], node_name)})
            if odd:
                notes.append(f"kept Conv widths {odd} are not multiples of 16: ONNX Runtime's blocked (NCHWc) "
                             "convolutions pad channels to 8 or 16 (AVX2 / AVX-512), so such widths may run no "
                             "faster; try round_to='auto' and measure")
        macs_after = count_macs(result_model)[0] if modified else macs_before
        result = PruneStructuredResult(
            model=result_model,
            modified=modified,
            groups=[reports[g.id] for g in analysis.groups] + _subgraph_reports(work),
            params_before=params_before,
            params_after=count_params(result_model) if modified else params_before,
            macs_before=macs_before,
            macs_after=macs_after,
            notes=notes,
            reconstruction=layers,
        )
        logger.info("prune_structured: %s", result.summary())
        return result

    def _cut(self, model: ir.Model, cuts: Mapping[int, np.ndarray], probe: Probe) -> tuple[ir.Model, str | None, Kept]:
        """A fresh copy of ``model`` with ``cuts`` applied, why it fails verification, and the
        kept indices of every cut initializer axis (``{initializer name: {axis: indices}}``)."""
        fresh, analysis = self._analyzed(model)
        kept: dict[AxisNode, np.ndarray] = {}
        for gid, units in cuts.items():
            group = analysis.groups[gid]
            indices = group.kept_indices(units)
            for axis in group.axes:
                if len(indices[axis.id]) < axis.size:
                    kept[axis] = indices[axis.id]
        by_weight: Kept = {}
        for axis, indices in kept.items():
            if axis.is_initializer:
                by_weight.setdefault(str(axis.value.name), {})[axis.axis] = indices
        try:
            apply_cuts(fresh, kept)
        except ValueError as exc:
            return fresh, str(exc), by_weight
        return fresh, check_pruned(fresh, probe), by_weight

    def _cut_verified(self, model: ir.Model, cuts: dict[int, np.ndarray], probe: Probe,
                      reports: dict[int, GroupReport]) -> tuple[ir.Model, dict[int, np.ndarray], Kept]:
        pruned, problem, kept = self._cut(model, cuts, probe)
        if problem is None:
            return pruned, cuts, kept
        logger.warning("pruned model failed verification (%s); retrying group by group", problem)
        good: dict[int, np.ndarray] = {}
        for gid, units in cuts.items():
            _, single, _ = self._cut(model, {gid: units}, probe)
            if single is None:
                good[gid] = units
            else:
                reports[gid].status, reports[gid].reason = "untouched", f"verification failed: {single}"
        if good:
            pruned, problem, kept = self._cut(model, good, probe)
            if problem is None:
                return pruned, good, kept
            for gid in good:
                reports[gid].status, reports[gid].reason = "untouched", f"verification failed together: {problem}"
        fresh, _ = self._analyzed(model)
        return fresh, {}, {}


def _keep_every_axis(group: Group, units: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Un-cut the best unit of any axis the cut would empty (no zero-width tensors)."""
    removed = {int(u) for u in units}
    for axis in group.axes:
        owners = group.unit_of[axis.id]
        if all(int(u) in removed for u in owners):
            best = max({int(u) for u in owners}, key=lambda u: (np.nan_to_num(scores[u], nan=-1.0), -u))
            removed.discard(best)
    return np.array(sorted(removed), dtype=np.int64)


def _is_conv(group: Group, node_name: str) -> bool:
    return any(node.op_type == "Conv" and str(node.name or node.op_type) == node_name for node in group.producers)


def _widths(group: Group, units: np.ndarray | None) -> dict[str, tuple[int, int]]:
    """Output channels (before, after) of each producer of the group."""
    removed = np.zeros(group.n_units, dtype=bool)
    if units is not None:
        removed[units] = True
    widths: dict[str, tuple[int, int]] = {}
    for axis, node in group.axes_with_role(Role.PRODUCER):
        kept = int((~removed[group.unit_of[axis.id]]).sum())
        widths.setdefault(str(node.name or node.op_type), (axis.size, kept))
    return widths
