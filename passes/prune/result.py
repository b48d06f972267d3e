"""What the structured and the transformer pruning results share: the parameter and MAC counts
before and after the cut, notes, and what reconstruction did to each consumer layer."""

from __future__ import annotations

import dataclasses

from onnx_compress.passes.base import CompressionResult
from onnx_compress.passes.prune.reconstruct import LayerReconstruction
from onnx_compress.table import change_text

__all__ = ["CutResult"]


@dataclasses.dataclass
class CutResult(CompressionResult):
    """The counts of a pass that cuts parameters (a subclass adds what it cut)."""

    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    #: per consumer layer, what reconstruction did (empty unless ``reconstruct``)
    reconstruction: list[LayerReconstruction] = dataclasses.field(default_factory=list)

    def counts_text(self) -> str:
        """``"params 225,034 -> 43,738 (-81%), MACs ..."`` (MACs when they were counted)."""
        text = f"params {change_text(self.params_before, self.params_after)}"
        return text + (f", MACs {change_text(self.macs_before, self.macs_after)}" if self.macs_before else "")
