"""The settings of :class:`~onnx_compress.passes.quantize.Quantize`, validated on construction.

Every field is declared, with its help text and allowed values, in :class:`QuantizeSettings`.
The values ``"auto"`` ask the pass to decide from the model, the CPU and measurements; each
decision is explained in the result (``QuantizeResult.choices``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from onnx_compress.budget import DEFAULT_MARGIN
from onnx_compress.errors import SettingError
from onnx_compress.passes.base import BudgetAwareSettings, jsonable
from onnx_compress.setting import BUDGET, setting

__all__ = [
    "MODES",
    "CALIBRATION_METHODS",
    "PREPROCESS_CHOICES",
    "GUARD_CHOICES",
    "OBJECTIVES",
    "METRIC_CHOICES",
    "QuantizeSettings",
]

Mode = Literal["auto", "static", "dynamic", "weight_only", "fp16"]
MODES: tuple[str, ...] = ("auto", "static", "dynamic", "weight_only", "fp16")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
FORMATS: tuple[str, ...] = ("qdq", "qoperator")
ACTIVATION_TYPES: tuple[str, ...] = ("auto", "uint8", "int8")
WEIGHT_TYPES: tuple[str, ...] = ("int8", "uint8")
PREPROCESS_CHOICES: tuple[str, ...] = ("auto", "ort", "transformer", "none")
GUARD_CHOICES: tuple[str, ...] = ("auto", "drop", "warn", "off")
OBJECTIVES: tuple[str, ...] = ("auto", "size", "latency", "balanced")
METRIC_CHOICES: tuple[str, ...] = ("auto", "top1", "cosine", "max_abs")
#: the word that, in ``exclude``, asks for sensitivity-driven exclusions
AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class QuantizeSettings(BudgetAwareSettings):
    """Settings of :class:`~onnx_compress.passes.quantize.Quantize`.

    Every field is declared once below with its help text and allowed values (the same text is
    ``quantize --help`` and the README's settings reference). The int8 fields apply to
    ``static`` / ``dynamic``, ``block_size`` and ``symmetric`` to ``weight_only``; ``max_drop``,
    ``metric`` and ``budget_margin`` drive the sensitivity-driven exclusion, ``objective``,
    ``guard`` and the ``benchmark_*`` fields the speed guard (``guard.py`` has the rules).
    """

    mode: Mode = setting("auto", choices=MODES, help="""
        static (int8 weights and activations, activation ranges calibrated on the calibration
        data), dynamic (int8 weights, activation ranges computed at run time, no data needed),
        weight_only (4-bit MatMul/Gemm weights in blocks of block_size, MatMulNBits), fp16
        (float16 weights and compute, float32 inputs and outputs), or auto (default): dynamic for
        transformer-like models, static for others when calibration data is given, else dynamic""")
    op_types: str | tuple[str, ...] = setting(AUTO, kind="names", words=(AUTO,), metavar="OP", help="""
        the op types to quantize, or auto (default): every op type of the mode present in the
        model, keeping only those that run faster quantized on this CPU (see guard)""")
    exclude: str | tuple[str, ...] = setting(AUTO, kind="names", words=(AUTO,), metavar="NODE", help="""
        node names kept in float, and/or auto (default): with a budget (max_drop and validation
        data) the most sensitive nodes are kept in float until the budget holds; "auto fc2"
        does both""")
    min_weight_elements: int | None = setting(None, kind="int", range=">= 0", cli=False, help="""
        nodes whose weight has fewer elements stay float as too small to gain; None (default) =
        4096 in dynamic and weight_only mode (each quantized node pays for quantizing its own
        input at run time), 0 in static mode (a float layer inside an int8 chain adds a
        dequantize/quantize pair) and fp16""")
    per_channel: bool = setting(True, help="""
        one scale per output channel of each weight (default on; much more accurate on
        pretrained transformers); off: one scale per tensor""")
    activation_type: Literal["auto", "uint8", "int8"] = setting("auto", choices=ACTIVATION_TYPES, cli=False, help="""
        uint8, int8 or auto (default: uint8 on x86-64, where ONNX Runtime's int8 kernels are
        fastest with uint8 activations and int8 weights, int8 elsewhere); static mode only:
        dynamic quantization always uses uint8 activations""")
    weight_type: Literal["int8", "uint8"] = setting("int8", choices=WEIGHT_TYPES, cli=False,
                                                    help="int8 (default) or uint8 weights")
    reduce_range: bool | Literal["auto"] = setting("auto", kind="bool", words=("auto",), cli=False, help="""
        quantize weights to 7 bits: true, false or auto (default: true only on x86-64 CPUs without
        VNNI, whose 8-bit multiply-add can saturate)""")
    format: Literal["qdq", "qoperator"] = setting("qdq", choices=FORMATS, help="""
        static mode: qdq (default: QuantizeLinear/DequantizeLinear pairs around float ops, which
        ONNX Runtime fuses into int8 kernels) or qoperator (QLinearConv, QGemm, ...)""")
    calibration_method: Literal["minmax", "entropy", "percentile"] = setting(
        "minmax", choices=CALIBRATION_METHODS,
        help="static mode: how activation ranges are set from the calibration data (percentile: the 99.999th)")
    calibration_samples: int = setting(512, range=">= 1", metavar="N",
                                       help="static mode: use at most this many calibration samples")
    calibration_batch: int = setting(16, range=">= 1", cli=False, help="""
        samples per calibration run (a model with a fixed batch size uses that size)""")
    block_size: int = setting(32, range=">= 16", metavar="N", help="""
        weight_only: weights per 4-bit block along the reduction axis, a power of two >= 16: 4
        bits per weight plus one float32 scale and a 4-bit zero point per block, i.e. 5.1 bits
        per weight at 32 (6.2x smaller than float32), 4.3 at 128 (7.4x)""")
    symmetric: bool = setting(False, cli=False, help="""
        weight_only: symmetric 4-bit blocks, without zero points (default false: asymmetric blocks
        were more accurate on all-MiniLM-L6-v2, embedding cosine 0.974 vs 0.967 at block 32, for
        6.2x instead of 6.4x smaller weights)""")
    preprocess: Literal["auto", "ort", "transformer", "none"] = setting("auto", choices=PREPROCESS_CHOICES, help="""
        pre-processing before quantizing: ort (ONNX Runtime's quantization pre-processing:
        symbolic shape inference, basic graph optimization), transformer (transformer fusions -
        attention core, GELU, skip LayerNorm - then ONNX Runtime's transformer optimizer), none,
        or auto (default: transformer for transformer-like models in dynamic, weight_only and
        fp16 mode, ort for the int8 modes otherwise, none else); a preparation that fails or
        changes the model's outputs is skipped and the reason reported""")
    smooth: float | Literal["auto", "off"] = setting("auto", kind="float", range="(0, 1)", words=("auto", "off"),
                                                     metavar="auto|off|ALPHA", help="""
        activation smoothing (SmoothQuant) before int8: per-channel scales move activation outliers
        into the weights of the MatMuls that read them; auto (default): in dynamic mode on
        transformer-like models with calibration data (the channel ranges) and validation data,
        try the strengths of smooth.ALPHA_CHOICES and keep the best on the validation data, or
        none if none beats plain int8; off; or a strength in (0, 1) applied as it is""")
    pack_attention: bool = setting(True, help="""
        dynamic mode: pack each fused attention layer (Q/K/V MatMuls + MultiHeadAttention) into one
        int8 QAttention when its three projections are quantized and its attention bias is provably
        the padding mask (or absent); default on (all-MiniLM-L6-v2, 2 threads, AVX-512 VNNI: batch
        1 1.9x -> 2.4x the fp32 speed, batch 8 +3-4 %, same cosine)""")
    skip_padding: bool = setting(True, help="""
        dynamic mode: run every per-token layer (projections, feed-forward, GELU, norms) on the
        real tokens only, gathered by the padding mask, when every attention layer provably masks
        padded keys; default on: per-token outputs are then 0 at padded positions and unchanged on
        real tokens, every other output unchanged (checked on probe inputs before quantizing;
        all-MiniLM-L6-v2, sequence 64, 39 % real tokens, 2 threads, AVX-512 VNNI: batch 8 2.2x
        -> 3.3x the fp32 speed; without padding the gathers cost a few percent)""")
    max_drop: float | None = setting(None, kind="float", range=">= 0", metavar="X", role=BUDGET, help="""
        the largest metric drop allowed on the validation data (points for top1, 1 - mean cosine
        for cosine); with exclude auto the most sensitive nodes stay float until it holds; None
        (default): no budget""")
    metric: str | Callable[..., float] = setting("auto", choices=METRIC_CHOICES, callable_ok=True, role=BUDGET,
                                                  help="""
        accuracy metric on the validation data: top1 (needs labels), cosine (against the input
        model's outputs), max_abs, auto (top1 with labels, else cosine), or (Python) a callable
        fn(outputs, labels) -> float, higher is better""")
    budget_margin: float = setting(DEFAULT_MARGIN, range=">= 0", metavar="Z", role=BUDGET, help="""
        standard errors of the measured drop added before it is compared with max_drop (default
        1.41: one standard error of the drop on a fresh sample the size of the validation data,
        see onnx_compress.budget; 0 = the raw drop); the pipeline sets its own""")
    sensitivity_samples: int = setting(64, range=">= 1", cli=False, help="""
        validation samples used to rank the nodes (the budget itself is always checked on all
        validation samples)""")
    analyze_sensitivity: bool = setting(False, cli=False, help="""
        rank every quantized node by sensitivity even when the budget holds or is not set (needs
        validation data)""")
    objective: Literal["auto", "size", "latency", "balanced"] = setting("auto", choices=OBJECTIVES, role=BUDGET,
                                                                        help="""
        what to pursue when int8 is smaller but slower on this CPU: size (the model of the mode
        asked for, every op type quantized, a loud warning with the measured ratio), latency (op
        types that make it slower are dropped; a result not faster than the input is not handed
        over), balanced (a slower result is kept only when its size gain is at least the square
        of its loss in speed, size ratio x speedup^2 >= 1; else op types are dropped, then the
        input comes back); auto (default): balanced with mode auto, latency with mode dynamic
        (its weights are no smaller than static's: it is paid for speed only), size with the
        other explicit modes""")
    guard: Literal["auto", "drop", "warn", "off"] = setting("auto", choices=GUARD_CHOICES, help="""
        speed guard: auto (default: benchmark the result against the input and act as the
        objective says), drop (drop op types that make it slower and retry, in every mode), warn
        (only warn) or off (no benchmark); in every objective, a result that is not measurably
        faster and less than 5 % smaller is not handed over""")
    min_speedup: float = setting(1.0, range="> 0", cli=False,
                                 help="the speedup the result must reach (default 1.0: faster than the input)")
    benchmark_batch: int = setting(8, range=">= 1", flag="--batch", metavar="N",
                                   help="samples per call in the speed guard's benchmark")
    benchmark_runs: int | None = setting(None, kind="int", range=">= 1", cli=False, help="""
        interleaved runs per model in the speed guard (default None: as many as fit in about two
        seconds, between 10 and 200)""")
    threads: int | None = setting(None, kind="int", range=">= 1", metavar="N", help="""
        ONNX Runtime intra-op threads for the benchmark and the validation runs (default: ONNX
        Runtime's choice); the guard always runs on the CPU""")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.op_types != AUTO and AUTO in self.op_types:
            raise SettingError("op_types must be 'auto' or a list of op types, not both")
        if self.block_size & (self.block_size - 1):
            raise SettingError(f"block_size must be a power of two >= 16 (16, 32, 64, 128, ...); got {self.block_size!r}")

    # ------------------------------------------------------------------ derived views
    @property
    def auto_exclude(self) -> bool:
        """Whether sensitivity-driven exclusion is on (``exclude`` is or contains ``"auto"``)."""
        return self.exclude == AUTO or AUTO in self.exclude

    @property
    def excluded_names(self) -> tuple[str, ...]:
        """The node names the user keeps in float."""
        if self.exclude == AUTO:
            return ()
        return tuple(name for name in self.exclude if name != AUTO)

    @property
    def auto_op_types(self) -> bool:
        return self.op_types == AUTO

    def as_dict(self) -> dict[str, Any]:
        values = jsonable(self)
        if callable(self.metric):
            values["metric"] = getattr(self.metric, "__name__", "custom")
        return values
