"""The settings of :class:`~onnx_compress.passes.quantize.Quantize`, validated on construction.

Every field is documented in :class:`QuantizeSettings`. The values ``"auto"`` ask the pass to
decide from the model, the CPU and measurements; each decision is explained in the result
(``QuantizeResult.choices``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from onnx_compress.errors import SettingError
from onnx_compress.passes.base import BudgetAwareSettings, jsonable

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


def _names(value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v for v in value):
        raise SettingError(f"{field} must be 'auto' or a list of non-empty names, got {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class QuantizeSettings(BudgetAwareSettings):
    """Settings of :class:`~onnx_compress.passes.quantize.Quantize`.

    What to do
        mode: ``static`` (int8 weights and activations, activation ranges calibrated on
            ``calibration=`` data), ``dynamic`` (int8 weights, activation ranges computed at run
            time), ``weight_only`` (4-bit MatMul/Gemm weights, ``MatMulNBits``), ``fp16`` (float16
            weights and compute, float32 inputs and outputs), or ``auto`` (default): ``dynamic``
            for transformer-like models, ``static`` for others when calibration data is given,
            else ``dynamic``.
        op_types: the op types to quantize, or ``"auto"`` (default): every op type of the mode
            present in the model, keeping only those that run faster quantized on this machine
            (see ``guard``).
        exclude: node names kept in float, and/or ``"auto"`` (default): when a budget is given
            (``max_drop`` and ``validation=`` data), the most sensitive nodes are kept in float
            until the budget holds. ``("auto", "fc2")`` does both.
        min_weight_elements: nodes whose weight has fewer elements are left in float as too
            small to gain. ``None`` (default) = 4096 in ``dynamic`` and ``weight_only`` mode (each
            quantized node pays for quantizing its own input at run time), 0 in ``static`` mode
            (a float layer inside an int8 chain adds a dequantize/quantize pair) and ``fp16``.

    How (int8)
        per_channel: one scale per output channel of each weight (default True); per-tensor
            otherwise. Per-channel is much more accurate on pretrained transformers.
        activation_type: ``uint8``, ``int8`` or ``auto`` (default: uint8 on x86-64, where ONNX
            Runtime's int8 kernels are fastest with uint8 activations and int8 weights, int8
            elsewhere). Static mode only: dynamic quantization always uses uint8 activations.
        weight_type: ``int8`` (default) or ``uint8``.
        reduce_range: quantize weights to 7 bits, ``True``/``False`` or ``"auto"`` (default: True
            only on x86-64 CPUs without VNNI, whose 8-bit multiply-add can saturate).
        format: ``qdq`` (default: QuantizeLinear/DequantizeLinear pairs around float ops, which
            ONNX Runtime fuses into int8 kernels) or ``qoperator`` (QLinearConv, QGemm, ...).
            Static mode only.
        calibration_method: ``minmax`` (default), ``entropy`` or ``percentile`` (99.999th).
        calibration_samples: at most this many calibration samples are used (default 512).
        calibration_batch: samples per calibration run (default 16; a model with a fixed batch
            size uses that size).

    How (4-bit)
        block_size: weights per quantization block along the reduction axis (default 32, a
            power of two >= 16): 4 bits per weight plus one float32 scale and a 4-bit zero
            point per block, i.e. 5.1 bits per weight at 32 (6.2x smaller than float32), 4.3 at
            128 (7.4x).
        symmetric: symmetric 4-bit blocks, without zero points (default False: asymmetric blocks
            were more accurate on all-MiniLM-L6-v2, embedding cosine 0.974 vs 0.967 at block 32,
            for 6.2x instead of 6.4x smaller weights).

    Preparation
        preprocess: ``ort`` (ONNX Runtime's quantization pre-processing: symbolic shape
            inference and basic graph optimization), ``transformer`` (transformer fusions:
            :class:`~onnx_compress.passes.fuse.Fuse` - attention core, GELU, skip LayerNorm -
            then ONNX Runtime's transformer optimizer, model type bert), ``none``, or ``auto``
            (default: ``transformer`` for transformer-like models in dynamic, weight_only and
            fp16 mode, ``ort`` for the int8 modes otherwise, ``none`` else). A preparation that
            fails, or changes the model's outputs, is skipped and the reason reported.

        smooth: activation smoothing (SmoothQuant, ``smooth.py``) before int8: per-channel
            scales move activation outliers into the weights of the MatMuls that read them.
            ``auto`` (default): in dynamic mode on transformer-like models, with calibration
            data (the channel ranges) and validation data (to choose), try the strengths in
            ``smooth.ALPHA_CHOICES`` and keep the one that scores best on the validation data,
            or none if none beats plain int8; ``off``; or a strength in (0, 1) applied as it is
            (needs calibration data).

    Budget (sensitivity-driven exclusion)
        max_drop: the largest metric drop allowed on the validation data (metric units:
            points for top1, 1 - mean cosine for cosine). ``None`` (default): no budget.
        metric: ``auto`` (top1 with labels, else cosine), ``top1``, ``cosine``, ``max_abs``, or a
            callable ``fn(outputs, labels) -> float`` (higher is better; not serializable).
        budget_margin: standard errors of the measured drop added before it is compared with
            ``max_drop`` (default 1.0, one standard error: the drop on a few hundred
            validation samples is an estimate; see ``onnx_compress.budget``; 0 = the raw drop).
            The pipeline sets its own.
        sensitivity_samples: validation samples used to rank the nodes (default 64; the
            budget itself is always checked on all validation samples).
        analyze_sensitivity: rank every quantized node by sensitivity even when the budget
            holds or is not set (needs validation data; default False).

    Objective and speed guard
        objective: what the pass pursues when size and speed disagree on this CPU (the guard
            measures; ``guard.py`` has the rules): ``size`` (the model of the mode asked for is
            written with every op type quantized, even when this CPU runs it slower: a loud
            warning with the measured ratio), ``latency`` (op types that make the model slower
            are dropped; a result that is not faster than the input is not handed over: the
            input comes back with the reason), ``balanced`` (a slower result is kept only when its
            size gain is at least the square of its loss in speed, ``size ratio x speedup^2 >=
            1``; otherwise op types are dropped, then the input comes back), or ``auto`` (default): ``balanced``
            with ``mode="auto"``; with an explicit mode, ``size`` for ``static``, ``weight_only``
            and ``fp16`` (an explicit request is honoured) and ``latency`` for ``dynamic`` (whose
            run-time activation quantization is a cost paid only for speed: its weights are no
            smaller than static's).
        guard: ``auto`` (default: benchmark the result against the input and act as the
            objective says), ``drop`` (drop op types that make it slower and retry, in every
            mode), ``warn`` (only warn) or ``off`` (no benchmark). See ``guard.py`` for how
            "measurably" is decided. In every objective, a result that is not measurably faster
            and less than 5 % smaller is not handed over.
        min_speedup: the speedup the result must reach (default 1.0: faster than the input).
        benchmark_batch: samples per call in the guard's benchmark (default 8).
        benchmark_runs: interleaved runs per model (default None: as many as fit in about two
            seconds, between 10 and 200).
        threads: ONNX Runtime intra-op threads for the benchmark and the validation runs
            (default None: ONNX Runtime's choice). The guard always runs on the CPU.
    """

    mode: Mode = "auto"
    op_types: str | tuple[str, ...] = AUTO
    exclude: str | tuple[str, ...] = AUTO
    min_weight_elements: int | None = None
    per_channel: bool = True
    activation_type: Literal["auto", "uint8", "int8"] = "auto"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool | Literal["auto"] = "auto"
    format: Literal["qdq", "qoperator"] = "qdq"
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = 512
    calibration_batch: int = 16
    block_size: int = 32
    symmetric: bool = False
    preprocess: Literal["auto", "ort", "transformer", "none"] = "auto"
    smooth: float | Literal["auto", "off"] = "auto"
    max_drop: float | None = None
    metric: str | Callable[..., float] = "auto"
    budget_margin: float = 1.0
    sensitivity_samples: int = 64
    analyze_sensitivity: bool = False
    objective: Literal["auto", "size", "latency", "balanced"] = "auto"
    guard: Literal["auto", "drop", "warn", "off"] = "auto"
    min_speedup: float = 1.0
    benchmark_batch: int = 8
    benchmark_runs: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        def choice(field: str, valid: tuple[str, ...]) -> None:
            value = getattr(self, field)
            if value not in valid:
                raise SettingError(f"{field} must be one of {', '.join(valid)}; got {value!r}")

        choice("mode", MODES)
        choice("activation_type", ACTIVATION_TYPES)
        choice("weight_type", WEIGHT_TYPES)
        choice("format", FORMATS)
        choice("calibration_method", CALIBRATION_METHODS)
        choice("preprocess", PREPROCESS_CHOICES)
        choice("guard", GUARD_CHOICES)
        choice("objective", OBJECTIVES)
        if self.op_types != AUTO:
            op_types = _names(self.op_types, "op_types")
            if AUTO in op_types:
                raise SettingError("op_types must be 'auto' or a list of op types, not both")
            object.__setattr__(self, "op_types", op_types)
        if self.exclude != AUTO:
            object.__setattr__(self, "exclude", _names(self.exclude, "exclude") if self.exclude else ())
        if self.smooth not in ("auto", "off") and (isinstance(self.smooth, (bool, str))
                                                  or not isinstance(self.smooth, (int, float))
                                                  or not 0.0 < self.smooth < 1.0):
            raise SettingError(f"smooth must be 'auto', 'off' or a strength between 0 and 1; got {self.smooth!r}")
        if self.reduce_range not in (True, False, "auto"):
            raise SettingError(f"reduce_range must be true, false or 'auto'; got {self.reduce_range!r}")
        for field in ("per_channel", "symmetric", "analyze_sensitivity"):
            if not isinstance(getattr(self, field), bool):
                raise SettingError(f"{field} must be true or false; got {getattr(self, field)!r}")
        for field, low in (("calibration_samples", 1), ("calibration_batch", 1), ("sensitivity_samples", 1),
                           ("benchmark_batch", 1)):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SettingError(f"{field} must be an integer >= {low}; got {value!r}")
        for field in ("min_weight_elements", "benchmark_runs", "threads"):
            value = getattr(self, field)
            low = 0 if field == "min_weight_elements" else 1
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise SettingError(f"{field} must be None or an integer >= {low}; got {value!r}")
        if not isinstance(self.block_size, int) or self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise SettingError(f"block_size must be a power of two >= 16 (16, 32, 64, 128, ...); got {self.block_size!r}")
        if self.max_drop is not None and (isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float))
                                          or self.max_drop < 0):
            raise SettingError(f"max_drop must be None or a number >= 0 (in the metric's unit); got {self.max_drop!r}")
        if not callable(self.metric) and self.metric not in METRIC_CHOICES:
            raise SettingError(f"metric must be one of {', '.join(METRIC_CHOICES)} or a callable; got {self.metric!r}")
        if isinstance(self.budget_margin, bool) or not isinstance(self.budget_margin, (int, float)) \
                or self.budget_margin < 0:
            raise SettingError(f"budget_margin must be a number of standard errors >= 0; got {self.budget_margin!r}")
        if isinstance(self.min_speedup, bool) or not isinstance(self.min_speedup, (int, float)) or self.min_speedup <= 0:
            raise SettingError(f"min_speedup must be a number > 0; got {self.min_speedup!r}")

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
