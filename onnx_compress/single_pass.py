"""One pass on a model file, as ``onnx-compress prune / lowrank / quantize`` run it.

:func:`apply_pass` normalizes the model first (as ``compress`` does: constant folding, shape
inference, ``Normalize``), runs the pass, and writes the result atomically; the input model and
its external data files are never overwritten (checked before any work). The
:class:`AppliedPass` it returns carries both results, the file sizes, and what to tell the user
about normalization: a note when it did more than fold and infer shapes, a warning when the
written file is larger than the input.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from onnx_compress.model_io import PathLike, check_output_path, load_model, model_files, save_model
from onnx_compress.stats import size_on_disk

__all__ = ["AppliedPass", "apply_pass"]


@dataclasses.dataclass(frozen=True)
class AppliedPass:
    """What :func:`apply_pass` did: the normalization and pass results, and the file sizes
    (``size_after`` is None when nothing was written)."""

    normalization: Any  # NormalizeResult
    result: Any  # the pass's CompressionResult
    output: Path | None
    size_before: int
    size_after: int | None

    def notes(self, what: str) -> list[str]:
        """The lines about normalization and file growth (``NormalizeResult.lines``); ``what`` names
        the written model (``"the pruned model"``)."""
        return self.normalization.lines(self.size_before, self.size_after or self.size_before, what)

    def summary(self, what: str) -> dict[str, Any]:
        """The normalization summary and the warnings among :meth:`notes`, for a JSON report."""
        return {"normalize": self.normalization.summary(),
                "warnings": [line for line in self.notes(what) if line.startswith("WARNING")]}


def apply_pass(model: PathLike, compression_pass: Any, output: PathLike, *, fold_batchnorm: bool = True,
               write_unchanged: bool = True) -> AppliedPass:
    """Normalize ``model`` (a file, never modified), run ``compression_pass`` on it and write the result
    to ``output``, unless the pass changed nothing and ``write_unchanged`` is false.
    ``fold_batchnorm=False`` keeps BatchNormalization nodes (BN-scale importance reads them)."""
    from onnx_compress.passes.normalize import Normalize

    protected = model_files(model)
    check_output_path(output, protected)
    normalization = Normalize(fold_batchnorm=fold_batchnorm)(load_model(model))
    result = compression_pass(normalization.model)
    if not (result.modified or write_unchanged):
        return AppliedPass(normalization, result, None, size_on_disk(model), None)
    save_model(result.model, output, protected=protected)
    return AppliedPass(normalization, result, Path(output), size_on_disk(model), size_on_disk(output))
