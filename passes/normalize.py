"""Normalize a model before compression: fold constants, lift weights, clean up, infer shapes.

Why
    Exporters emit weights in many forms: initializers, ``Constant`` nodes, and (in older
    exports) constant subgraphs such as ``Identity``/``Cast``/``Transpose`` chains on a weight.
    Compression passes look for *initializers* feeding ``Conv``/``Gemm``/``MatMul``; after this
    pass every weight that is computable ahead of time is one.

What (onnxscript's optimizer loop on onnx-ir, composed here, plus the third-party patterns of
:mod:`onnx_compress.passes.normalize_patterns`)
    0. a graph out of topological order is sorted (on a copy); initializers that are also graph
       inputs (IR version 3 models) become plain constants; constant nodes inside ``If`` /
       ``Loop`` / ``Scan`` bodies that read only main-graph constants are moved out and equal
       ones merged (so folding does not store a copy per branch);
    1. inline model-local functions;
    2. up to ``iterations`` rounds, stopping early when nothing changes, of: constant folding
       (inputs up to ``fold_size_limit`` elements, so weight chains fold too; ``QuantizeLinear``
       / ``DequantizeLinear`` are never folded, which keeps quantized models quantized),
       onnxscript's default rewrite rules (no-op removal, Reshape/Transpose/Cast chains, Pad into
       Conv, and BatchNormalization into the preceding Conv/Gemm unless ``fold_batchnorm`` is
       off), a per-channel constant ``Add`` after a Conv folded into its bias (the paddle2onnx
       ``Add(Conv, Reshape(b, [1, C, 1, 1]))``), and removal of unused nodes, functions and
       opsets; ``ConstantOfShape`` is folded where it computes a weight (onnxscript keeps it
       elsewhere);
    3. every remaining ``Constant`` node lifted to an initializer;
    4. ONNX shape inference, so later passes see value shapes.

    Growth: folding ``ConstantOfShape`` weights or float16 weights behind a ``Cast`` stores
    bigger tensors; :class:`NormalizeResult` reports the constant bytes before and after and,
    when they grew, why (``growth``).

    Identical initializers are deliberately NOT deduplicated (onnxscript's optimizer does): two
    layers that happened to start with equal tensors (zero biases) must stay independent, or
    pruning and factoring would have to refuse them as shared.

Limits
    ``min_opset`` upgrades the default-domain opset with the ONNX version converter, which needs
    the model as one protobuf: refused (PassRefusedError) above 2 GB. Subgraphs of control-flow
    ops are folded but their initializers are lifted to the main graph. ``initializer_inputs``
    off keeps IR-3 style initializer inputs overridable (their weights then stay invisible).
"""

from __future__ import annotations

import dataclasses
import logging

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnx_compress.errors import PassRefusedError
from onnx_compress.model_io import EXTERNAL_DATA_THRESHOLD_BYTES, weights_nbytes
from onnx_compress.passes import normalize_patterns as patterns
from onnx_compress.passes.base import CompressionPass, CompressionResult, PassSettings
from onnx_compress.setting import setting
from onnx_compress.table import human_bytes
from onnx_compress.stats import op_histogram

__all__ = ["Normalize", "NormalizeSettings", "NormalizeResult", "upgrade_opset"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NormalizeSettings(PassSettings):
    """Settings of :class:`Normalize` (each field's help text is its declaration below)."""

    fold_batchnorm: bool = setting(True, help="""
        fold BatchNormalization into the preceding Conv / ConvTranspose / Gemm; off keeps BatchNorm
        scales, e.g. for BN-based importance""")
    fold_size_limit: int = setting(2**26, range=">= 0", help="""
        the largest input (in elements) constant folding may read (2**26: enough for weight chains
        of large layers)""")
    iterations: int = setting(3, range=">= 1", help="at most this many fold/rewrite rounds")
    min_opset: int | None = setting(None, kind="int", range="[7, 24]", help="""
        upgrade the default-domain opset to at least this (default None: keep)""")
    initializer_inputs: bool = setting(True, help="""
        treat initializers that are also graph inputs (IR version 3 models) as constants: remove
        them from the inputs""")


@dataclasses.dataclass
class NormalizeResult(CompressionResult):
    """What normalization changed: node counts per op before and after, the opset."""

    ops_before: dict[str, int] = dataclasses.field(default_factory=dict)
    ops_after: dict[str, int] = dataclasses.field(default_factory=dict)
    initializers_before: int = 0
    initializers_after: int = 0
    opset_before: int = 0
    opset_after: int = 0
    sorted_graph: bool = False
    initializer_inputs: list[str] = dataclasses.field(default_factory=list)
    constant_of_shape_folded: int = 0
    subgraph_constants_hoisted: int = 0
    subgraph_constants_merged: int = 0
    conv_bias_folded: list[str] = dataclasses.field(default_factory=list)
    constant_bytes_before: int = 0
    constant_bytes_after: int = 0
    growth: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        before, after = sum(self.ops_before.values()), sum(self.ops_after.values())
        text = f"{before} -> {after} nodes, {self.initializers_before} -> {self.initializers_after} initializers"
        if self.opset_after != self.opset_before:
            text += f", opset {self.opset_before} -> {self.opset_after}"
        if self.sorted_graph:
            text += ", nodes put in topological order"
        if self.initializer_inputs:
            text += f", {len(self.initializer_inputs)} initializers removed from the graph inputs"
        if self.constant_of_shape_folded:
            text += f", {self.constant_of_shape_folded} ConstantOfShape weights folded"
        if self.subgraph_constants_hoisted or self.subgraph_constants_merged:
            text += (f", {self.subgraph_constants_hoisted} constant nodes moved out of subgraphs "
                     f"({self.subgraph_constants_merged} duplicates merged)")
        if self.conv_bias_folded:
            text += f", {len(self.conv_bias_folded)} bias Adds folded into Conv"
        if self.growth:
            text += (f"; constants {human_bytes(self.constant_bytes_before)} -> "
                     f"{human_bytes(self.constant_bytes_after)}: {'; '.join(self.growth)}")
        return text

    def lines(self, size_before: int, size_after: int, what: str) -> list[str]:
        """What a command that normalized first says about it: one line when normalization did more
        than fold and infer shapes (third-party patterns), and a warning when the written file
        (``what``) is larger than the input file, with the reasons known."""
        notable = (self.sorted_graph or self.initializer_inputs or self.constant_of_shape_folded
                   or self.subgraph_constants_hoisted or self.conv_bias_folded or self.growth)
        out = [f"normalized: {self.summary()}"] if notable else []
        if size_after > size_before:
            reasons = list(self.growth) or ["normalization wrote shape annotations (value_info) and constant "
                                            "folding results"]
            out.append(f"WARNING: {what} is larger than the input ({human_bytes(size_before)} -> "
                       f"{human_bytes(size_after)}, {size_after / size_before:.2f}x): {'; '.join(reasons)}")
        return out


def _rewrite_rules(fold_batchnorm: bool) -> list[object]:
    from onnxscript import rewriter

    rules = list(rewriter._DEFAULT_REWRITE_RULES)
    if not fold_batchnorm:
        rules = [rule for rule in rules if "BatchNorm" not in str(getattr(rule, "name", "") or "")]
    return rules


def upgrade_opset(model: ir.Model, target: int) -> ir.Model:
    if weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES:
        raise PassRefusedError(
            "cannot upgrade the opset of a model over 2 GB (the ONNX version converter needs one protobuf)"
        )
    proto = ir.serde.serialize_model(model)
    try:
        converted = onnx.version_converter.convert_version(proto, target)
    except Exception as exc:
        raise PassRefusedError(f"the ONNX version converter cannot upgrade this model to opset {target}: {exc}") from exc
    return ir.serde.deserialize_model(converted)


class Normalize(CompressionPass):
    """Constant folding, weight lifting and shape inference; see the module docstring."""

    name = "normalize"
    Settings = NormalizeSettings
    settings: NormalizeSettings

    def call(self, model: ir.Model) -> NormalizeResult:
        from onnxscript import rewriter
        from onnxscript.optimizer import _constant_folding

        settings = self.settings
        ops_before = op_histogram(model)
        init_before = len(model.graph.initializers)
        opset_before = model.opset_imports.get("", 0)
        bytes_before = patterns.constant_bytes(model)
        cast_bytes = patterns._float16_cast_weights(model)
        work, sorted_graph = patterns.ensure_sorted(model)
        if not sorted_graph:
            work = self.copy_model(model)
        if settings.min_opset is not None and opset_before < settings.min_opset:
            work = upgrade_opset(work, settings.min_opset)
        moved_inputs = patterns.internalize_initializer_inputs(work) if settings.initializer_inputs else []
        hoisted, merged = patterns.hoist_subgraph_constants(work)
        common_passes.InlinePass()(work)
        cone = patterns.weight_cone(work)
        folded: dict[str, int] = {}
        conv_bias = patterns.FoldConvBiasAddPass()

        loop = ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=settings.fold_size_limit,
                    output_size_limit=settings.fold_size_limit,
                    should_fold=patterns.should_fold_rule(cone, folded),
                ),
                rewriter.RewritePass(_rewrite_rules(settings.fold_batchnorm)),
                conv_bias,
                common_passes.RemoveUnusedNodesPass(),
                common_passes.RemoveUnusedFunctionsPass(),
                common_passes.RemoveUnusedOpsetsPass(),
            ],
            steps=settings.iterations,
            early_stop=True,
        )
        pipeline = ir.passes.Sequential(
            loop,
            common_passes.RemoveUnusedNodesPass(),
            common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common_passes.LiftSubgraphInitializersToMainGraphPass(),
            common_passes.ShapeInferencePass(strict_mode=False),
        )
        pipeline(work)
        ops_after = op_histogram(work)
        result = NormalizeResult(
            model=work,
            modified=False,
            ops_before=ops_before,
            ops_after=ops_after,
            initializers_before=init_before,
            initializers_after=len(work.graph.initializers),
            opset_before=opset_before,
            opset_after=work.opset_imports.get("", 0),
            sorted_graph=sorted_graph,
            initializer_inputs=moved_inputs,
            constant_of_shape_folded=folded.get("ConstantOfShape", 0),
            subgraph_constants_hoisted=hoisted,
            subgraph_constants_merged=merged,
            conv_bias_folded=conv_bias.folded,
            constant_bytes_before=bytes_before,
            constant_bytes_after=patterns.constant_bytes(work),
        )
        result.growth = _growth_reasons(result, cast_bytes)
        # shape annotations alone do not count as a modification
        result.modified = (
            ops_before != ops_after
            or init_before != result.initializers_after
            or opset_before != result.opset_after
            or bool(moved_inputs or sorted_graph or conv_bias.folded)
        )
        logger.info("normalize: %s", result.summary())
        return result


#: constant growth up to this many bytes (or 0.1 % of the constants) is not reported
GROWTH_NOTE_BYTES = 1024


def _growth_reasons(result: NormalizeResult, cast_bytes: int) -> list[str]:
    """Why the constants grew (empty when they did not)."""
    grown = result.constant_bytes_after - result.constant_bytes_before
    if grown <= max(GROWTH_NOTE_BYTES, result.constant_bytes_before // 1000):
        return []  # shape constants and the like: not worth a line
    reasons = []
    if result.constant_of_shape_folded:
        reasons.append(f"{result.constant_of_shape_folded} weights computed by ConstantOfShape are stored as tensors "
                       "(a pass can only compress a weight it can see)")
    if cast_bytes:
        reasons.append(f"{human_bytes(cast_bytes)} of float16 weights read through Cast are stored as float32")
    if not reasons:
        reasons.append("constant folding stored computed constants (broadcast, tiled or expanded tensors) as tensors")
    return [f"+{human_bytes(grown)}: " + "; ".join(reasons)]
