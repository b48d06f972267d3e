"""ONNX Runtime: sessions, validation against a reference, benchmarks, deployment and serving.

Nothing here imports torch, tensorflow or the converters. The server lives in
``onnx_compress.runtime.serve`` (``from onnx_compress.runtime.serve import serve``; it needs the
``serve`` extra), Triton repositories in ``onnx_compress.runtime.deploy``.
"""

from onnx_compress.runtime.activations import expose_values, iter_activations
from onnx_compress.runtime.cpu import CpuFeatures, detect_cpu
from onnx_compress.runtime.benchmark import Comparison, Latency, benchmark, compare, compare_many
from onnx_compress.runtime.deploy import TritonDeployment, deploy_triton
from onnx_compress.runtime.metrics import Score, score
from onnx_compress.runtime.session import Runner, SessionSettings, cuda_available, resolve_providers
from onnx_compress.runtime.validate import Evaluator, validate

__all__ = [
    "Comparison",
    "CpuFeatures",
    "Evaluator",
    "Latency",
    "Runner",
    "Score",
    "SessionSettings",
    "TritonDeployment",
    "benchmark",
    "compare",
    "compare_many",
    "cuda_available",
    "deploy_triton",
    "detect_cpu",
    "expose_values",
    "iter_activations",
    "resolve_providers",
    "score",
    "validate",
]
