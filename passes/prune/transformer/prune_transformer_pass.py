"""``prune_transformer``: cut attention heads, FFN neurons and whole encoder layers of a transformer.

Steps (each in its own module, in the spirit of Torch-Pruning's dependency / pruner split):

1. detection (:mod:`.detect`): the encoder layers, each with its attention block (Q/K/V/output
   projections, head count and size, the head split/merge Reshapes) and its FFN; what does not
   match is reported per layer with the reason;
2. depth (:mod:`.layers`): ``layers`` whole layers are removed, chosen on calibration data
   (``layer_importance``: ``skip`` = greedy by the output cosine with the layer removed, or
   ``cosine`` = how little a layer changes the residual stream);
3. importance (:mod:`.importance`): per head and per FFN neuron, by its contribution to the
   residual stream on calibration data (or weight magnitudes);
4. width (:mod:`.cuts`): in every remaining layer ``round(heads * H)`` heads and
   ``round(ffn * F)`` neurons with the lowest scores go (at least one head and one neuron
   stay); kept FFN widths rounded up to ``round_to``;
5. verification: the cut model must compute what the original computes with the removed heads'
   values and neurons' outputs set to zero (exact, up to float rounding), then pass
   ``onnx.checker`` (full) and run in ONNX Runtime with the original outputs' names and shapes.
   A layer whose cut fails is left whole and reported;
6. reconstruction (``reconstruct=True``, calibration data): the output projection of every cut
   attention and the down projection of every cut FFN are re-fitted by ridge least squares so
   that their outputs match the uncut model's (:mod:`onnx_compress.passes.prune.reconstruct`).

Order with ``fuse``: prune the plain exported graph, then fuse. Both work (the fused form's
``MultiHeadAttention`` is pruned through its ``num_heads``), but the plain graph is the form
the other passes (structured pruning, low-rank, reconstruction) read, the ``fuse`` pass fuses a
pruned graph as it does the original, and the packed ``Attention`` node (``fuse`` with
``attention='packed'``) is refused.

Limits: no fine-tuning (the companion recovery training does that); hidden width (the residual
stream shared by every layer and the LayerNorms) is not cut; encoder self-attention only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnx_compress.errors import PassRefusedError
from onnx_compress.passes.base import CompressionPass, PassSettings, check_strength
from onnx_compress.passes.prune.reconstruct import LayerReconstruction, reconstruct
from onnx_compress.passes.prune.result import CutResult
from onnx_compress.passes.prune.transformer.cuts import clear_shapes, cut_ffn, cut_heads, head_columns, masked_reference
from onnx_compress.passes.prune.transformer.detect import EncoderLayer, TransformerStructure, find_structure, prepare
from onnx_compress.passes.prune.transformer.importance import IMPORTANCE, unit_scores
from onnx_compress.passes.prune.transformer.layers import choose_layers, remove_layers
from onnx_compress.passes.prune.verify import Probe, check_pruned, make_probe
from onnx_compress.setting import SEARCHED, setting
from onnx_compress.stats import count_macs, count_params
from onnx_compress.table import format_table

__all__ = ["LayerReport", "PruneTransformer", "PruneTransformerResult", "PruneTransformerSettings"]

logger = logging.getLogger(__name__)

LAYER_IMPORTANCE = ("skip", "cosine")
HEAD_SCOPES = ("layer", "global")


@dataclasses.dataclass(frozen=True)
class PruneTransformerSettings(PassSettings):
    """Settings of :class:`PruneTransformer` (each field's help text is its declaration below)."""

    heads: float = setting(0.0, range="[0, 1]", metavar="R", role=SEARCHED, help="""
        fraction of the attention heads each encoder layer loses: round(heads * H) heads; a
        fraction that would remove every head of a layer is an error (at least one head stays)""")
    ffn: float = setting(0.0, range="[0, 1]", metavar="R", role=SEARCHED,
                         help="fraction of the FFN neurons each encoder layer loses")
    layers: int = setting(0, range=">= 0", metavar="N", role=SEARCHED, help="""
        number of whole encoder layers to remove (the residual stream passes through); at least
        one layer stays""")
    importance: str = setting("contribution", choices=IMPORTANCE, flag="--head-importance", help="""
        heads and FFN neurons ranked by their contribution to the residual stream on the
        calibration data (default) or by weight magnitude (no data)""")
    head_scope: str = setting("layer", choices=HEAD_SCOPES, help="""
        layer (default: every layer loses round(heads * H) of its own heads) or global
        (round(heads * total heads) go, the lowest contribution scores over all layers: the scores
        are in the residual stream's units, so layers that matter less lose more heads; every
        layer keeps at least its best head)""")
    layer_importance: str = setting("skip", choices=LAYER_IMPORTANCE, help="""
        layers chosen by skip (default: greedily, the layer whose removal keeps the output closest
        to the original's) or cosine (the layers that change the hidden state least, 1 - cos(layer
        input, layer output)); both on the calibration data""")
    round_to: int = setting(1, range=">= 1", cli=False, help="kept FFN widths are rounded up to a multiple of this")
    reconstruct: bool = setting(False, help="""
        re-fit the output projection of every cut attention block and the down projection of
        every cut FFN by ridge least squares on the calibration data""")
    calibration_samples: int = setting(128, range=">= 1", cli=False, help="""
        calibration samples used for head/neuron importance and reconstruction""")
    layer_samples: int = setting(64, range=">= 1", cli=False, help="""
        calibration samples used to choose the layers to remove (skip runs the model once per
        candidate layer and step on them)""")
    reconstruct_rows: int = setting(20000, range=">= 1", cli=False,
                                    help="rows (tokens) per layer for reconstruction, at most")
    reconstruct_ridge: float = setting(0.01, range="> 0", cli=False,
                                       help="reconstruction's ridge strength (see passes/prune/reconstruct.py)")


@dataclasses.dataclass
class LayerReport:
    """What happened to one encoder layer.

    ``status``: ``removed`` (the whole layer), ``pruned`` (heads and/or neurons cut), ``kept``
    (nothing to cut) or ``refused`` (a cut was asked for and not done: see ``reason``).
    ``kept_heads`` are indices into the original heads; ``score`` is the layer's score when
    layers were ranked (see ``layers.choose_layers``): with ``layer_importance`` skip the output
    cosine with the layer removed (higher = less needed), with cosine ``1 - cos(in, out)`` of the
    layer (higher = more needed).
    """

    index: int
    status: str
    heads_before: int | None
    heads_after: int | None
    ffn_before: int | None
    ffn_after: int | None
    kept_heads: list[int] = dataclasses.field(default_factory=list)
    score: float | None = None
    reason: str = ""


@dataclasses.dataclass
class PruneTransformerResult(CutResult):
    """What transformer pruning did, layer by layer."""

    layers: list[LayerReport] = dataclasses.field(default_factory=list)
    form: str = ""

    @property
    def removed(self) -> list[int]:
        return [layer.index for layer in self.layers if layer.status == "removed"]

    def summary(self) -> str:
        kept = [layer for layer in self.layers if layer.status != "removed"]

        def total(attr: str, layers: list[LayerReport]) -> int:
            return sum(getattr(layer, attr) or 0 for layer in layers)

        text = (f"layers {len(self.layers)} -> {len(kept)}, heads {total('heads_before', self.layers)} -> "
                f"{total('heads_after', kept)}, FFN neurons {total('ffn_before', self.layers)} -> "
                f"{total('ffn_after', kept)}; {self.counts_text()}")
        refused = [layer.index for layer in self.layers if layer.status == "refused"]
        if refused:
            text += f"; refused in layers {refused}"
        changed = [layer for layer in self.layers if layer.status in ("removed", "pruned")]
        if changed:  # what the pipeline's report shows per stage: each layer that changed
            text += "".join(f"; layer {layer.index}: {self._layer_cut(layer)}" for layer in changed)
        return text

    @staticmethod
    def _layer_cut(layer: LayerReport) -> str:
        """``removed``, or the heads and FFN widths that changed (``heads 12 -> 9, FFN 1536 -> 1152``)."""
        if layer.status == "removed":
            return "removed"
        parts = [f"{what} {before} -> {after or 0}" for what, before, after in
                 (("heads", layer.heads_before, layer.heads_after), ("FFN", layer.ffn_before, layer.ffn_after))
                 if before is not None and after != before]
        return ", ".join(parts)

    def lines(self) -> list[str]:
        """The human-readable report ("" = blank line): per encoder layer, what was cut (heads, FFN
        neurons, the whole layer) and why not; the layers reconstructed; notes."""

        def width(before: int | None, after: int | None) -> str:
            if before is None:
                return ""
            return f"{before}" if after == before else f"{before} -> {after if after is not None else 0}"

        rows = [[layer.index, layer.status, width(layer.heads_before, layer.heads_after),
                 width(layer.ffn_before, layer.ffn_after), "" if layer.score is None else f"{layer.score:.4f}",
                 layer.reason] for layer in self.layers]
        return ["", format_table(["layer", "status", "heads", "FFN neurons", "layer score", "reason"], rows),
                *(f"reconstructed {layer.node}: output error {layer.error_before:.4f} -> {layer.error_after:.4f}"
                  for layer in self.reconstruction if layer.status == "refit"),
                *(f"note: {note}" for note in self.notes)]


class PruneTransformer(CompressionPass):
    """Cut heads, FFN neurons and whole layers of a transformer encoder; see the module docstring."""

    name = "prune_transformer"
    Settings = PruneTransformerSettings
    settings: PruneTransformerSettings

    def scaled(self, strength: float) -> PruneTransformer:
        check_strength(strength)
        return self.with_settings(dataclasses.replace(self.settings, heads=self.settings.heads * strength,
                                                      ffn=self.settings.ffn * strength,
                                                      layers=int(math.floor(self.settings.layers * strength + 1e-9))))

    # ------------------------------------------------------------------ call

    def call(self, model: ir.Model) -> PruneTransformerResult:
        settings = self.settings
        data = self.calibration.take(settings.calibration_samples) if self.calibration is not None else None
        needs_data = [why for why, needed in (
            (f"importance {settings.importance!r}", settings.importance == "contribution"
             and (settings.heads > 0 or settings.ffn > 0)),
            (f"layer_importance {settings.layer_importance!r}", settings.layers > 0),
            ("reconstruct", settings.reconstruct)) if needed]
        if needs_data and data is None:
            raise PassRefusedError(f"{' and '.join(needs_data)} need(s) calibration data: pass calibration=... "
                                   "(CLI: --data calib.npz), or use importance='magnitude' for heads and FFN")
        work = self.copy_model(model)
        prepare(work)
        structure = find_structure(work)
        self._check_request(structure)
        params_before = count_params(work)
        macs_before = count_macs(work)[0]
        probe = make_probe(work, data)
        notes = list(structure.notes)
        if probe.note:
            notes.append(probe.note)
        reports = {layer.index: LayerReport(
            index=layer.index, status="kept",
            heads_before=layer.attention.heads if layer.attention else None,
            heads_after=layer.attention.heads if layer.attention else None,
            ffn_before=layer.ffn.width if layer.ffn else None, ffn_after=layer.ffn.width if layer.ffn else None,
            kept_heads=list(range(layer.attention.heads)) if layer.attention else [])
            for layer in structure.layers}

        # depth
        if settings.layers:
            assert data is not None
            chosen, scores = choose_layers(work, structure.layers, settings.layers, data.take(settings.layer_samples),
                                           settings.layer_importance)
            for index, score in scores.items():
                reports[index].score = score
            if len(chosen) < settings.layers:
                raise PassRefusedError(f"only {len(chosen)} of the {settings.layers} layers asked for can be removed")
            remove_layers(work, [layer for layer in structure.layers if layer.index in chosen])
            for index in chosen:
                reports[index].status = "removed"
                reports[index].heads_after = reports[index].ffn_after = None
                reports[index].kept_heads = []
            common_passes.ShapeInferencePass(strict_mode=False)(work)
        depth_model = work.clone()
        # the layers left, found again in the model without the removed ones (original indices kept)
        remaining = [i for i in sorted(reports) if reports[i].status != "removed"]
        found = find_structure(work).layers
        if len(found) != len(remaining):
            raise PassRefusedError(f"after removing layers {sorted(set(reports) - set(remaining))}, "
                                   f"{len(found)} layers were found instead of {len(remaining)}")
        layers = [dataclasses.replace(layer, index=index) for layer, index in zip(found, remaining)]

        # width
        kept = self._plan_width(work, layers, data, reports)
        reconstruction: list[LayerReconstruction] = []
        if kept:
            work, kept = self._cut_verified(depth_model, layers, kept, probe, reports)
            if kept and settings.reconstruct:
                assert data is not None
                cut_weights = self._cut_weights(depth_model, remaining, kept)
                reconstruction = reconstruct(depth_model, work, cut_weights, data, ridge=settings.reconstruct_ridge,
                                             max_rows=settings.reconstruct_rows)
        problem = check_pruned(work, probe)
        if problem is not None:  # pragma: no cover - every step above was verified
            raise PassRefusedError(f"the pruned model failed verification: {problem}")
        modified = bool(settings.layers) or bool(kept)
        result = PruneTransformerResult(
            model=work if modified else self.copy_model(model), modified=modified,
            layers=[reports[i] for i in sorted(reports)], form=structure.form,
            params_before=params_before, params_after=count_params(work) if modified else params_before,
            macs_before=macs_before, macs_after=count_macs(work)[0] if modified else macs_before,
            notes=notes, reconstruction=reconstruction)
        logger.info("prune_transformer: %s", result.summary())
        return result

    # ------------------------------------------------------------------ planning

    def _check_request(self, structure: TransformerStructure) -> None:
        settings = self.settings
        if not structure.layers:
            why = "; ".join(structure.notes[:3]) or "no Softmax or MultiHeadAttention with Q/K/V projections"
            raise PassRefusedError(f"no transformer encoder layers (attention heads) found: {why}")
        total = len(structure.layers)
        if settings.layers >= total:
            raise PassRefusedError(f"layers={settings.layers} would remove all {total} encoder layers of the model; "
                                   f"at most {total - 1} can go")
        removable = [layer for layer in structure.layers if not layer.depth_reason]
        if settings.layers > len(removable):
            reasons = "; ".join(f"layer {layer.index}: {layer.depth_reason}" for layer in structure.layers
                                if layer.depth_reason)
            raise PassRefusedError(f"layers={settings.layers} but only {len(removable)} layers can be removed ({reasons})")
        for layer in structure.layers:
            if settings.heads and layer.attention is not None and settings.head_scope == "layer" \
                    and round(settings.heads * layer.attention.heads) >= layer.attention.heads:
                raise PassRefusedError(f"heads={settings.heads:g} would remove all {layer.attention.heads} heads of "
                                       f"layer {layer.index}; at least one head must stay (use a smaller fraction)")
            if settings.ffn and layer.ffn is not None and round(settings.ffn * layer.ffn.width) >= layer.ffn.width:
                raise PassRefusedError(f"ffn={settings.ffn:g} would remove all {layer.ffn.width} FFN neurons of "
                                       f"layer {layer.index}; at least one must stay (use a smaller fraction)")

    def _plan_width(self, model: ir.Model, layers: list[EncoderLayer], data: Any,
                    reports: dict[int, LayerReport]) -> dict[int, tuple[list[int] | None, list[int] | None]]:
        """Per layer index: (kept heads or None, kept neurons or None) for the layers that change."""
        settings = self.settings
        if not settings.heads and not settings.ffn:
            return {}
        head_scores, ffn_scores = unit_scores(model, layers, settings.importance, data)
        global_keep = _global_head_counts(layers, head_scores, settings.heads) \
            if settings.heads and settings.head_scope == "global" else {}
        plan: dict[int, tuple[list[int] | None, list[int] | None]] = {}
        for layer in layers:
            report = reports[layer.index]
            keep_heads: list[int] | None = None
            keep_ffn: list[int] | None = None
            reasons = []
            if settings.heads:
                if layer.attention is None:
                    reasons.append(f"heads: {layer.attention_reason or 'no attention block'}")
                else:
                    n = global_keep.get(layer.index, layer.attention.heads - round(settings.heads * layer.attention.heads))
                    keep_heads = _top(head_scores[layer.index], n)
            if settings.ffn:
                if layer.ffn is None:
                    reasons.append(f"FFN: {layer.ffn_reason or 'no feed-forward block'}")
                else:
                    width = layer.ffn.width
                    n = width - round(settings.ffn * width)
                    n = min(width, -(-n // settings.round_to) * settings.round_to)
                    keep_ffn = _top(ffn_scores[layer.index], n)
            if reasons:
                report.status, report.reason = "refused", "; ".join(reasons)
            if keep_heads is not None and len(keep_heads) == layer.attention.heads:  # type: ignore[union-attr]
                keep_heads = None
            if keep_ffn is not None and len(keep_ffn) == layer.ffn.width:  # type: ignore[union-attr]
                keep_ffn = None
            if keep_heads is not None or keep_ffn is not None:
                plan[layer.index] = (keep_heads, keep_ffn)
        return plan

    # ------------------------------------------------------------------ cutting

    def _cut(self, depth_model: ir.Model, remaining: list[int],
             plan: dict[int, tuple[list[int] | None, list[int] | None]], probe: Probe) -> tuple[ir.Model, str | None]:
        """A fresh copy of ``depth_model`` with ``plan`` cut, and why it fails verification."""
        from onnx_compress.runtime.session import Runner, SessionSettings

        cut = depth_model.clone()
        masked = depth_model.clone()
        for target, apply in ((cut, True), (masked, False)):
            by_index = self._layers_of(target, remaining)
            heads = {i: (by_index[i].attention, k) for i, (k, _) in plan.items() if k is not None}
            ffns = {i: (by_index[i].ffn, f) for i, (_, f) in plan.items() if f is not None}
            if apply:
                for block, keep in heads.values():
                    cut_heads(target.graph, block, keep)  # type: ignore[arg-type]
                for ffn, keep in ffns.values():
                    cut_ffn(target.graph, ffn, keep)  # type: ignore[arg-type]
                clear_shapes(target.graph)
                common_passes.ShapeInferencePass(strict_mode=False)(target)
            else:
                masked_reference(target.graph, heads, ffns)  # type: ignore[arg-type]
        problem = check_pruned(cut, probe)
        if problem is not None or probe.feeds is None:
            return cut, problem
        try:
            settings = SessionSettings(provider="cpu", intra_op_threads=1)
            got = Runner(cut, settings).run(probe.feeds)
            want = Runner(masked, settings).run(probe.feeds)
        except Exception as exc:  # noqa: BLE001 - reported as the reason
            return cut, f"ONNX Runtime: {exc}"
        for a, b in zip(got, want):
            scale = max(1.0, float(np.abs(b).max())) if b.size else 1.0
            error = float(np.abs(np.asarray(a, np.float64) - b).max()) if b.size else 0.0
            if error > 1e-3 * scale:
                return cut, (f"the cut model differs from the original with those heads/neurons zeroed by {error:.3g} "
                             "(the head layout was not understood)")
        return cut, None

    @staticmethod
    def _layers_of(model: ir.Model, remaining: list[int]) -> dict[int, EncoderLayer]:
        """The layers of ``model`` (a copy of the depth-pruned model) by original index."""
        return dict(zip(remaining, find_structure(model).layers))

    def _cut_verified(self, depth_model: ir.Model, layers: list[EncoderLayer],
                      plan: dict[int, tuple[list[int] | None, list[int] | None]], probe: Probe,
                      reports: dict[int, LayerReport]) -> tuple[ir.Model, dict[int, tuple[list[int] | None, list[int] | None]]]:
        remaining = [layer.index for layer in layers]
        cut, problem = self._cut(depth_model, remaining, plan, probe)
        if problem is not None:
            logger.warning("transformer cut failed verification (%s); retrying layer by layer", problem)
            good = {}
            for index, item in plan.items():
                _, single = self._cut(depth_model, remaining, {index: item}, probe)
                if single is None:
                    good[index] = item
                else:
                    reports[index].status, reports[index].reason = "refused", f"verification failed: {single}"
            plan = good
            cut, problem = self._cut(depth_model, remaining, plan, probe) if plan else (depth_model.clone(), None)
            if problem is not None:
                for index in plan:
                    reports[index].status, reports[index].reason = "refused", f"verification failed together: {problem}"
                return depth_model.clone(), {}
        for index, (keep_heads, keep_ffn) in plan.items():
            report = reports[index]
            if report.status == "kept":
                report.status = "pruned"
            if keep_heads is not None:
                report.heads_after, report.kept_heads = len(keep_heads), sorted(keep_heads)
            if keep_ffn is not None:
                report.ffn_after = len(keep_ffn)
        return cut, plan

    def _cut_weights(self, model: ir.Model, remaining: list[int],
                     plan: dict[int, tuple[list[int] | None, list[int] | None]]) -> dict[str, dict[int, np.ndarray]]:
        """For reconstruction: the cut output/down projection weights with their kept input rows."""
        by_index = self._layers_of(model, remaining)
        weights: dict[str, dict[int, np.ndarray]] = {}
        for index, (keep_heads, keep_ffn) in plan.items():
            layer = by_index[index]
            if keep_heads is not None and layer.attention is not None:
                weights[str(layer.attention.o.weight.name)] = {0: head_columns(keep_heads, layer.attention.head_dim)}
            if keep_ffn is not None and layer.ffn is not None:
                weights[str(layer.ffn.down.weight.name)] = {0: np.asarray(sorted(keep_ffn), dtype=np.int64)}
        return weights


def _global_head_counts(layers: list[EncoderLayer], scores: dict[int, np.ndarray], fraction: float) -> dict[int, int]:
    """Heads each layer keeps when ``round(fraction * total)`` heads go by one ranking over all
    layers (lowest score first), every layer keeping at least its best head."""
    ranked = sorted((float(value), layer.index, head) for layer in layers if layer.attention is not None
                    for head, value in enumerate(scores[layer.index]))
    keep = {layer.index: layer.attention.heads for layer in layers if layer.attention is not None}
    cut = round(fraction * len(ranked))
    if cut > len(ranked) - len(keep):
        raise PassRefusedError(f"heads={fraction:g} with head_scope 'global' would remove {cut} of {len(ranked)} heads; "
                               f"at most {len(ranked) - len(keep)} can go (one head stays in each of {len(keep)} layers)")
    for _, index, _head in ranked:
        if cut == 0:
            break
        if keep[index] > 1:
            keep[index] -= 1
            cut -= 1
    return keep


def _top(scores: np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` highest scores (ties: the lower index), sorted."""
    order = sorted(range(len(scores)), key=lambda i: (-float(np.nan_to_num(scores[i], nan=-1.0)), i))
    return sorted(order[:count])
