"""What the standalone commands say about normalization and about an output larger than its input.

``quantize``, ``prune`` and ``lowrank`` normalize the model first, as ``compress`` does, so they
see the same model (weights behind ConstantOfShape / Identity / Cast chains, IR-3 initializer
inputs, Conv bias Adds). Normalization can make the stored model bigger (weights computed at
load time become tensors a pass can compress): a command never writes a larger model without
saying so and why.
"""

from __future__ import annotations

from typing import Any

from onnx_compress.table import human_bytes

__all__ = ["normalize_lines", "growth_warning"]


def normalize_lines(result: Any) -> list[str]:
    """One line when normalization did more than fold and infer shapes (third-party patterns)."""
    notable = (result.sorted_graph or result.initializer_inputs or result.constant_of_shape_folded
               or result.subgraph_constants_hoisted or result.conv_bias_folded or result.growth)
    return [f"normalized: {result.summary()}"] if notable else []


def growth_warning(size_before: int, size_after: int, result: Any, what: str) -> list[str]:
    """A warning line when the written file is larger than the input file, with the reasons known."""
    if size_after <= size_before:
        return []
    reasons = list(result.growth)
    if not reasons:
        reasons.append("normalization wrote shape annotations (value_info) and constant folding results")
    return [f"WARNING: {what} is larger than the input ({human_bytes(size_before)} -> {human_bytes(size_after)}, "
            f"{size_after / size_before:.2f}x): {'; '.join(reasons)}"]
