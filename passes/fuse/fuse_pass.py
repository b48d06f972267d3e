"""Fuse transformer sub-graphs into ONNX Runtime's fused operators (CPU and CUDA kernels).

Why
    An exported BERT-style encoder is hundreds of small nodes per layer: the attention core
    (scores MatMul, scale, mask ``Where``/``IsNaN`` handling, Softmax, the head ``Transpose``/
    ``Reshape`` chains), erf-GELU as five element-wise nodes, LayerNorm after a residual ``Add``.
    ONNX Runtime's own session optimizer does not recognise the attention pattern that
    ``torch.onnx`` emits for ``scaled_dot_product_attention``, so those nodes run one by one.
    After int8 quantization the MatMuls are ~3x cheaper but these nodes are not, and they cap the
    speed-up: all-MiniLM-L6-v2, batch 8, sequence 64, 2 threads, ONNX Runtime profile per call:
    int8 without fusion spends ~17 ms in int8 MatMuls and ~22 ms elsewhere; fused, the rest is
    ~15 ms (``MultiHeadAttention`` 5 ms, ``SkipLayerNormalization`` 7 ms, ``BiasGelu`` 3 ms).

Other exporters
    Three export forms are fused (tests on each): the dynamo export (onnxscript's rules match it
    as written), the TorchScript export (``dynamo=False``, what Hugging Face's exporters write:
    run-time Reshape targets, a bias-first ``Add``, a ``Where(IsNaN)`` guard with a ``[1]``-shaped
    zero) and Keras through tf2onnx (LayerNorm as ``GlobalAveragePool`` moments, erf-GELU with
    ``x * 1/sqrt(2)``, attention as einsums decomposed into batched MatMuls). Before the ORT
    rules run: symbolic shapes (``shapes.py``: constant Reshape targets, one name per axis) and
    our exact rewrite rules (``rules.py``, the maths in its docstring) bring those forms to the
    ones onnxscript's rules match, or fuse them directly (Keras attention).

What (onnxscript's ``ort_fusions`` rules, composed here)
    constant folding and shape simplification, then erf/tanh GELU -> ``Gelu`` (+ bias ->
    ``BiasGelu``), the attention core -> ``MultiHeadAttention`` (scale and Q/K/V biases folded
    in). ``attention="packed"`` further packs the Q/K/V projections into one ``Attention`` node.
    Residual ``Add`` + LayerNorm: ``SkipLayerNormalization`` (and the RMS variants), or ``Sum`` +
    ``LayerNormalization`` where ONNX Runtime's fused kernel is the slower of the two on this
    CPU (``residual_norm.py``: 3.3x slower here, so ``auto`` writes ``Sum``).

    The default (``attention="mha"``) leaves the Q/K/V projections as MatMuls on purpose: int8
    quantization reaches them. The packed ``Attention`` node could only be quantized as
    ``QAttention``, which has no input for the additive attention bias that the fused graph
    carries, so ONNX Runtime's quantizer leaves it float (MiniLM measured: 30.8 MB and 1.73x at
    batch 1 packed, 22.9 MB and 2.25x with ``mha``). Dynamic int8 packs each layer itself, after
    choosing which projections to quantize, where it can prove that bias to be the padding mask
    (``passes/quantize/attention_pack.py``): then the layer becomes one int8 ``QAttention``.

Limits
    Fused operators are in the ``com.microsoft`` domain: the result runs in ONNX Runtime (CPU,
    CUDA), not in other ONNX back-ends, and ONNX's own shape inference does not type their
    outputs (parameters and MACs of fused attention are not counted by ``model_stats``). Run it
    after structured pruning and low-rank factoring (they follow MatMul/Reshape chains, not fused
    nodes) and before quantization. Decoder-only fusions (rotary embeddings, grouped-query
    attention) are not applied. A graph with nothing to fuse comes back unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Literal

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnx_compress.passes.base import CompressionPass, CompressionResult, PassSettings
from onnx_compress.passes.fuse.residual_norm import measure, residual_adds, unfuse_residual_adds
from onnx_compress.passes.fuse.rules import attention_rules, keras_rules, normalization_rules
from onnx_compress.passes.fuse.shapes import infer_symbolic, resolve_reshapes, symbolic_shapes
from onnx_compress.setting import setting
from onnx_compress.stats import op_histogram

__all__ = ["Fuse", "FuseSettings", "FuseResult"]

logger = logging.getLogger(__name__)

AttentionFusion = Literal["mha", "packed", "off"]


@dataclasses.dataclass(frozen=True)
class FuseSettings(PassSettings):
    """Settings of :class:`Fuse` (each field's help text is its declaration below)."""

    attention: AttentionFusion = setting("mha", choices=("mha", "packed", "off"), help="""
        mha (default): the attention core becomes MultiHeadAttention and the Q/K/V projections stay
        MatMuls, so int8 quantization reaches them; packed: the projections are packed into one
        Attention node too (float models only: it stays float when quantized); off: attention is
        left as it is""")
    gelu: bool = setting(True, help="fuse GELU (erf or tanh form) and its bias into Gelu / BiasGelu")
    layer_norm: Literal["auto", "fused", "unfused", "off"] = setting("auto", choices=("auto", "fused", "unfused", "off"),
                                                                     help="""
        residual Add + LayerNorm as fused (SkipLayerNormalization, and the RMS-norm forms), unfused
        (Sum + LayerNormalization, which ONNX Runtime leaves alone), auto (default: whichever is
        faster on this CPU, timed at the model's width on 512 rows) or off (left as exported; ONNX
        Runtime fuses it when the session starts)""")
    threads: int | None = setting(None, kind="int", range=">= 1", help="""
        ONNX Runtime intra-op threads for the auto timing (default None: its choice)""")


@dataclasses.dataclass
class FuseResult(CompressionResult):
    """How many sub-graphs each fusion replaced, and the node counts before and after."""

    fusions: dict[str, int] = dataclasses.field(default_factory=dict)
    nodes_before: int = 0
    nodes_after: int = 0
    #: how residual Add + LayerNorm was written (fused, unfused, off) and why
    layer_norm: str = ""
    layer_norm_reason: str = ""

    def summary(self) -> str:
        if not self.modified:
            return "nothing to fuse"
        done = ", ".join(f"{name} {count}" for name, count in self.fusions.items() if count)
        return f"{self.nodes_before} -> {self.nodes_after} nodes ({done}); residual norms {self.layer_norm}"


def _fusion_steps(settings: FuseSettings, layer_norm: str) -> list[tuple[str, Callable[..., int]]]:
    """The fusions to apply, in onnxscript's order (later rules consume earlier results)."""
    from onnxscript.rewriter.ort_fusions import attention, bias_gelu, erfgelu, gelu, mha, mha_bias, mha_scale
    from onnxscript.rewriter.ort_fusions import rms_normalization, sdpa, skip_normalization

    steps: list[tuple[str, Callable[..., int]]] = []
    if settings.gelu:
        steps.append(("erf_gelu", erfgelu.fuse_erfgelu))
    if layer_norm == "fused":
        steps += [
            ("rms_normalization", rms_normalization.fuse_rms_normalization),
            ("skip_layer_normalization", skip_normalization.fuse_skip_layer_normalization),
            ("skip_rms_normalization", skip_normalization.fuse_skip_rms_normalization),
        ]
    if settings.attention != "off":
        steps += [
            ("sdpa", sdpa.fuse_sdpa),
            ("mha1", mha.fuse_mha1),
            ("mha2", mha.fuse_mha2),
            ("mha_scale", mha_scale.fuse_mha_scale),
            ("mha_bias", mha_bias.fuse_mha_bias),
        ]
        if settings.attention == "packed":
            steps.append(("attention", attention.fuse_attention))
    if settings.gelu:
        steps += [("gelu", gelu.fuse_gelu), ("bias_gelu", bias_gelu.fuse_bias_gelu)]
    return steps


class Fuse(CompressionPass):
    """Transformer fusions into ONNX Runtime's fused operators; see the module docstring."""

    name = "fuse"
    Settings = FuseSettings
    settings: FuseSettings

    def call(self, model: ir.Model) -> FuseResult:
        from onnxscript.optimizer import optimize
        from onnxscript.rewriter.ort_fusions import shape_optimization

        nodes_before = sum(op_histogram(model).values())
        work = self.copy_model(model)
        common_passes.ShapeInferencePass(strict_mode=False)(work)
        optimize(work)
        shape_optimization.rules.apply_to_model(work)
        optimize(work)
        fusions: dict[str, int] = {}
        shapes = infer_symbolic(work)
        if shapes is not None:
            fusions["reshape_targets"], fusions["identity_reshapes"] = resolve_reshapes(work, shapes)
            if fusions["reshape_targets"] or fusions["identity_reshapes"]:
                optimize(work)  # the shape arithmetic that fed them is dead now
                shapes = infer_symbolic(work) or shapes
            symbolic_shapes(work, shapes)
        fusions["normalized"] = normalization_rules().apply_to_model(work)
        fusions["layer_norm_and_gelu_forms"] = keras_rules().apply_to_model(work)
        if self.settings.attention != "off":
            fusions["einsum_attention"] = attention_rules().apply_to_model(work)
        layer_norm, reason = self._choose_layer_norm(work)
        for name, fuse in _fusion_steps(self.settings, layer_norm):
            kwargs = {"apply_shape_inference": True} if name == "sdpa" else {}
            fusions[name] = int(fuse(work, **kwargs))
            if name == "skip_rms_normalization":
                common_passes.CommonSubexpressionEliminationPass()(work)
        if layer_norm == "unfused":
            fusions["residual_sum"] = unfuse_residual_adds(work)
        fused = sum(fusions.values())
        if not fused:
            logger.info("fuse: nothing to fuse")
            return FuseResult(model=self.copy_model(model), modified=False, fusions=fusions,
                              nodes_before=nodes_before, nodes_after=nodes_before, layer_norm=layer_norm,
                              layer_norm_reason=reason)
        optimize(work)  # inline leftover intermediate functions, drop unused nodes
        ir.passes.Sequential(
            common_passes.RemoveUnusedNodesPass(),
            common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            common_passes.ShapeInferencePass(strict_mode=False),
        )(work)
        result = FuseResult(model=work, modified=True, fusions=fusions, nodes_before=nodes_before,
                            nodes_after=sum(op_histogram(work).values()), layer_norm=layer_norm,
                            layer_norm_reason=reason)
        logger.info("fuse: %s", result.summary())
        return result

    def _choose_layer_norm(self, model: ir.Model) -> tuple[str, str]:
        """``fused`` / ``unfused`` / ``off`` for the residual norms, and why."""
        choice = self.settings.layer_norm
        if choice != "auto":
            return choice, "as set"
        adds = residual_adds(model)
        if not adds:
            return "fused", "no residual Add + LayerNormalization to decide on"
        norm = next(iter(adds[0].outputs[0].uses()))[0]
        scale = norm.inputs[1].const_value if len(norm.inputs) > 1 and norm.inputs[1] is not None else None
        if scale is None or len(scale.shape) != 1:
            return "fused", "the LayerNormalization width is not a constant"
        timing = measure(int(scale.shape[0]), threads=self.settings.threads)
        word = "unfused" if timing.unfused_is_faster else "fused"
        return word, (f"measured on this CPU at {timing.rows} x {timing.width}: SkipLayerNormalization "
                      f"{timing.fused_ms:.3f} ms, Sum + LayerNormalization {timing.unfused_ms:.3f} ms")
