"""The automatic choices of the quantization pass, each returned with its reason.

Every function takes the user's setting and, when it is ``"auto"``, decides from the model
(:class:`~onnx_compress.passes.quantize.analysis.ModelAnalysis`), the CPU
(:class:`~onnx_compress.runtime.cpu.CpuFeatures`) and the data at hand, returning
``(value, Choice | None)``: a Choice is recorded in the result whenever something was decided
for the user. Which op types run faster quantized is not a rule here: the speed guard measures it
(``guard.py``).

The rules, and the measurements behind them (ONNX Runtime 1.32, x86-64 with AVX-512 VNNI):

- mode: transformer-like models -> dynamic (all-MiniLM-L6-v2: dynamic per-channel int8 after the
  transformer optimizer ran ~2x faster at cosine 0.99; static QDQ on its MatMuls ran 0.74x at
  cosine 0.93); other models -> static when calibration data is given (the seed CNN: static
  QDQ 1.2x faster at batch 8; dynamic ConvInteger 4-7x slower), else dynamic.
- pre-processing: transformer fusions for transformer-like models outside static mode (the
  ``Fuse`` pass, then ONNX Runtime's transformer optimizer): fused attention, GELU and skip
  LayerNorm are what make dynamic int8 pay off (all-MiniLM-L6-v2, batch 8: int8 1.7x faster
  unfused, 2.1x fused); ONNX Runtime's quantization pre-processing for the int8 modes otherwise
  (its recommended first step).
- smoothing: dynamic int8 on transformer-like models, strength chosen on validation data
  (``smooth.py``; MiniLM: every MatMul int8 at cosine 0.9976 instead of six kept float).
- reduce_range: only on x86-64 without VNNI (``target.py``).
- activation type (static): uint8 on x86-64 (U8S8, the fastest int8 kernels there: 1.14x vs
  1.05x for S8S8 on the seed CNN at batch 1), int8 elsewhere.
- small layers: in dynamic and 4-bit mode, nodes with fewer than 4096 weights stay float (each
  saves under 13 KiB); in static mode none (keeping a small layer float inside an int8 chain adds a dequantize/quantize
  pair and forced ONNX Runtime into a slow uint8 NCHW MaxPool: the seed CNN with conv1 (288
  weights) float ran 0.6x instead of 1.2x).
"""

from __future__ import annotations

from onnx_compress.errors import DataError, SettingError
from onnx_compress.passes.quantize.analysis import WEIGHT_OP_TYPES, ModelAnalysis
from onnx_compress.passes.quantize.result import Choice
from onnx_compress.passes.quantize.settings import QuantizeSettings
from onnx_compress.runtime.cpu import CpuFeatures

__all__ = [
    "choose_mode",
    "choose_objective",
    "choose_preprocess",
    "choose_reduce_range",
    "choose_activation_type",
    "choose_min_weight_elements",
    "choose_op_types",
    "SMALL_LAYER_WEIGHTS",
]

#: below this many weights a node is "too small to gain" in dynamic and 4-bit mode
SMALL_LAYER_WEIGHTS = 4096


def choose_mode(settings: QuantizeSettings, analysis: ModelAnalysis, has_calibration: bool) -> tuple[str, Choice | None]:
    if settings.mode == "static" and not has_calibration:
        raise DataError("static quantization needs calibration data: pass calibration=... (CLI: --data calib.npz)")
    if settings.mode != "auto":
        return settings.mode, None
    if analysis.transformer_like:
        return "dynamic", Choice("mode", "dynamic", f"transformer-like model ({analysis.transformer_reason}): "
                                 "dynamic int8 keeps activation ranges per call, static QDQ was slower and less "
                                 "accurate on transformers here")
    if has_calibration:
        return "static", Choice("mode", "static", "calibration data given and the model is not transformer-like: "
                                "static int8 keeps activations int8 between layers")
    return "dynamic", Choice("mode", "dynamic", "no calibration data: dynamic int8 needs none")


def choose_objective(settings: QuantizeSettings, mode: str) -> tuple[str, Choice]:
    """What the guard pursues (``size``, ``latency`` or ``balanced``), always reported.

    An explicit mode is a request: ``static``, ``weight_only`` and ``fp16`` are written as asked
    (objective ``size``; slower is a loud warning, not a silent substitute). ``dynamic`` int8
    quantizes activations at run time, work that only pays as speed (its int8 weights are the
    same as static's), so an explicit ``dynamic`` pursues ``latency``: a result that is not
    faster is not handed over. ``mode="auto"`` is where the tool trades: ``balanced``.
    """
    if settings.objective != "auto":
        return settings.objective, Choice("objective", settings.objective, "as set")
    if settings.mode == "auto":
        return "balanced", Choice("objective", "balanced", "mode auto: a slower int8 model is kept only when its size "
                                  "gain is at least the square of its loss in speed (size ratio x speedup^2 >= 1)")
    if mode == "dynamic":
        return "latency", Choice("objective", "latency", "mode dynamic asked for: run-time activation quantization "
                                 "only pays as speed, so a result that is not faster than the input is not "
                                 "handed over (--objective size keeps it)")
    return "size", Choice("objective", "size", f"mode {mode} asked for: the {mode} model is written with every op "
                          "type of the mode, with a loud warning if this CPU runs it slower (--objective "
                          "latency|balanced lets the tool trade size for speed)")


def choose_preprocess(settings: QuantizeSettings, mode: str, analysis: ModelAnalysis) -> tuple[str, Choice | None]:
    if settings.preprocess != "auto":
        return settings.preprocess, None
    if analysis.transformer_like and mode in ("dynamic", "weight_only", "fp16"):
        return "transformer", Choice("preprocess", "transformer",
                                     "transformer-like model: attention, GELU and residual-norm fusions (Fuse, then "
                                     "ONNX Runtime's transformer optimizer), which int8 MatMuls need to pay off")
    if mode in ("static", "dynamic"):
        return "ort", Choice("preprocess", "ort", "ONNX Runtime's recommended quantization pre-processing: "
                             "shape inference and basic graph optimization")
    return "none", None


def choose_reduce_range(settings: QuantizeSettings, mode: str, cpu: CpuFeatures) -> tuple[bool, Choice | None]:
    if mode not in ("static", "dynamic"):
        return False, None
    if settings.reduce_range != "auto":
        return bool(settings.reduce_range), None
    value, reason = cpu.needs_reduce_range()
    return value, Choice("reduce_range", value, reason)


def choose_activation_type(settings: QuantizeSettings, mode: str, cpu: CpuFeatures) -> tuple[str, Choice | None]:
    if mode != "static":
        return "uint8", None  # dynamic quantization computes uint8 activations; others have none
    if settings.activation_type != "auto":
        return settings.activation_type, None
    if cpu.x86:
        return "uint8", Choice("activation_type", "uint8",
                               f"{cpu.arch}: ONNX Runtime's int8 kernels are fastest with uint8 activations and "
                               "int8 weights (U8S8)")
    return "int8", Choice("activation_type", "int8", f"{cpu.arch}: signed activations (S8S8) for non-x86 CPUs")


def choose_min_weight_elements(settings: QuantizeSettings, mode: str) -> tuple[int, Choice | None]:
    if settings.min_weight_elements is not None:
        return settings.min_weight_elements, None
    if mode == "dynamic":
        return SMALL_LAYER_WEIGHTS, Choice(
            "min_weight_elements", SMALL_LAYER_WEIGHTS,
            f"dynamic: each quantized node quantizes its own input at run time; below {SMALL_LAYER_WEIGHTS} "
            "weights (16 KiB) that costs more than it saves")
    if mode == "weight_only":
        return SMALL_LAYER_WEIGHTS, Choice(
            "min_weight_elements", SMALL_LAYER_WEIGHTS,
            f"weight_only: below {SMALL_LAYER_WEIGHTS} weights (16 KiB) a 4-bit layer saves under 13 KiB "
            "and runs a dequantizing kernel instead of a plain MatMul")
    if mode == "static":
        return 0, Choice("min_weight_elements", 0,
                         "static: a float layer inside an int8 chain adds a dequantize/quantize pair, "
                         "so small layers are quantized too")
    return 0, None


def choose_op_types(settings: QuantizeSettings, mode: str, analysis: ModelAnalysis) -> tuple[list[str], list[str]]:
    """(op types to start from, warnings). ``auto``: every op type of the mode present among the
    candidates; the guard then drops those that make the model slower."""
    present = sorted({c.op_type for c in analysis.candidates[mode]})
    if settings.auto_op_types:
        return present, []
    requested = list(settings.op_types)  # type: ignore[arg-type]
    warnings: list[str] = []
    if mode != "fp16":
        supported = WEIGHT_OP_TYPES[mode]
        unsupported = [op for op in requested if op not in supported]
        if unsupported:
            raise SettingError(
                f"op_types {unsupported} cannot be quantized in {mode} mode; {mode} quantizes: {', '.join(supported)}"
            )
    missing = [op for op in requested if op not in present]
    if missing:
        warnings.append(f"op_types {missing} have no quantizable node in this model")
    return [op for op in requested if op in present], warnings


def choose_smoothing(settings: QuantizeSettings, mode: str, analysis: ModelAnalysis, has_calibration: bool,
                     has_validation: bool) -> tuple[tuple[float, ...], Choice | None]:
    """The smoothing strengths to try (empty: no smoothing) and why (see ``smooth.py``).

    all-MiniLM-L6-v2, dynamic int8 with every MatMul quantized: embedding cosine 0.9926 plain,
    0.9975 smoothed at 0.75; on a CNN activation outliers are not the error that dominates.
    """
    from onnx_compress.passes.quantize.smooth import ALPHA_CHOICES

    value = settings.smooth
    if value == "off":
        return (), None
    if value != "auto":
        if mode not in ("static", "dynamic"):
            return (), Choice("smooth", "off", f"smoothing is for int8 MatMuls; mode {mode} has none")
        if not has_calibration:
            raise SettingError("smooth needs calibration data (the activation ranges per channel): pass calibration=... "
                              "(CLI: --data calib.npz)")
        return (float(value),), None
    if mode != "dynamic" or not analysis.transformer_like:
        return (), None
    if not (has_calibration and has_validation):
        return (), Choice("smooth", "off", "smoothing needs calibration data (channel ranges) and validation data "
                          "(to choose its strength); not both given")
    return ALPHA_CHOICES, None
