"""ONNX Runtime: sessions, validation against a reference, benchmarks (and later deploy/serve).

Nothing here imports torch, tensorflow or the converters.
"""

from onnx_compress.runtime.activations import expose_values, iter_activations
from onnx_compress.runtime.benchmark import Comparison, Latency, benchmark, compare
from onnx_compress.runtime.metrics import Score, score
from onnx_compress.runtime.session import Runner, SessionSettings, cuda_available, resolve_providers
from onnx_compress.runtime.validate import Evaluator, validate

__all__ = [
    "Comparison",
    "Evaluator",
    "Latency",
    "Runner",
    "Score",
    "SessionSettings",
    "benchmark",
    "compare",
    "cuda_available",
    "expose_values",
    "iter_activations",
    "resolve_providers",
    "score",
    "validate",
]
