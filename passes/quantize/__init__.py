"""Quantization built on ONNX Runtime: static and dynamic int8, 4-bit weight-only, fp16.

What it computes
    int8 (``static``, ``dynamic``): a float tensor ``x`` is stored as ``q = clamp(round(x / s) + z)``
    with scale ``s`` and zero point ``z``; weights per output channel (``per_channel``) or per
    tensor, symmetric int8. Static mode fixes the activation ranges from calibration data
    (MinMax: the observed range; Entropy: the range minimising the KL divergence of the
    histogram; Percentile: the 99.999th percentile) and inserts QuantizeLinear/DequantizeLinear
    pairs that ONNX Runtime fuses into int8 kernels; dynamic mode computes each activation's
    uint8 range at run time (no calibration). ``weight_only`` packs MatMul weights (Gemm after
    rewriting it as MatMul + Add, and Gather tables) into 4-bit blocks of ``block_size`` values
    along the reduction axis, each with a float32 scale and (asymmetric) a 4-bit zero point
    (``MatMulNBits``): 4 + 32/block_size (+ 4/block_size) bits per weight. ``fp16`` converts
    weights and compute to float16 and keeps float32 inputs and outputs.

    All of this is ONNX Runtime's (``onnxruntime.quantization``: ``quantize_static`` with a
    calibration data reader over our Dataset, ``quantize_dynamic``, ``MatMulNBitsQuantizer``;
    ``onnxruntime.transformers.float16``). The pass adds the choices, the data plumbing, the
    measurement and the budget:

    - ``auto`` choices (``auto.py``), each explained in ``QuantizeResult.choices``: the mode from
      the model kind, ONNX Runtime's pre-processing or transformer optimizer (checked for output
      parity before use), reduce_range from the CPU's VNNI flag (``target.py``), the activation
      type, small layers left float;
    - the speed guard (``guard.py``): the result is benchmarked against the input, interleaved,
      in blocks, on this CPU; when every block is slower, auto mode drops the op types whose
      removal helps most and retries (on the seed CNN, dynamic ConvInteger ran 4-30x slower than
      float: Conv is dropped); a result that is not measurably faster carries a loud warning;
    - sensitivity analysis (``sensitivity.py``): each node quantized alone, scored on validation
      data with the budget metric; ``exclude="auto"`` keeps the most sensitive nodes float
      until ``max_drop`` holds on all validation data, and the result lists them with their
      sensitivity and the float bytes they keep.

Limits
    - The pass runs ONNX Runtime's tools file to file in a temporary folder (``backend.py``);
      models over 1.8 GB of weights use external data there and are loaded fully into memory at
      the end.
    - Already-quantized models are refused ("nothing to do"), as are models without a node the
      mode can quantize. Pre-processing can rename fused nodes (MatMul + Add -> Gemm
      ``NAME/MatMulAddFusion``); results name nodes as in the pre-processed model, and a user
      exclusion that pre-processing would fuse away switches pre-processing off.
    - Speed is measured, on a shared CPU, at one batch size (``benchmark_batch``); it is a
      measurement, not a guarantee. Quantized models target ONNX Runtime's CPU kernels; the guard
      always runs on the CPU.
    - The result uses ONNX Runtime contrib ops (``com.microsoft``) when the transformer optimizer
      or 4-bit mode is used: it runs in ONNX Runtime, not in every ONNX backend.
    - ``scaled()`` is not implemented: quantization has no strength to dial; its budget is
      enforced by the sensitivity-driven exclusions above.
"""

from onnx_compress.passes.quantize.quantize_pass import Quantize
from onnx_compress.passes.quantize.result import (
    Choice,
    ExcludedNode,
    NodeSensitivity,
    QuantizeResult,
    SpeedCheck,
)
from onnx_compress.passes.quantize.settings import QuantizeSettings
from onnx_compress.runtime.cpu import CpuFeatures, detect_cpu

__all__ = [
    "Choice",
    "CpuFeatures",
    "ExcludedNode",
    "NodeSensitivity",
    "Quantize",
    "QuantizeResult",
    "QuantizeSettings",
    "SpeedCheck",
    "detect_cpu",
]
