"""The one exception family of onnx-compress.

Every error a user can cause (a bad file, bad data, a bad setting, a missing optional
framework) is raised as a subclass of :class:`OnnxCompressError` with a message that says
what was wrong and what to do. The CLI prints ``error: <message>`` on one line and exits
non-zero; only ``--debug`` shows a traceback. Programming errors (bugs) are not wrapped here:
they surface as the original exception type so they are noticed and fixed.

This module imports nothing from the rest of the project, so every layer may import it.
"""

from __future__ import annotations

__all__ = [
    "OnnxCompressError",
    "ModelLoadError",
    "UnsafeModelError",
    "OutputPathError",
    "DataError",
    "SettingError",
    "MissingDependencyError",
    "ExportError",
    "ParityError",
    "RuntimeSessionError",
    "PassRefusedError",
    "BudgetError",
    "RecipeError",
    "DeployError",
    "UnsupportedModelError",
    "TrainingError",
    "one_line",
]


class OnnxCompressError(Exception):
    """Base class of every error onnx-compress raises on purpose."""

    #: process exit status the CLI uses for this error
    exit_code: int = 2


class ModelLoadError(OnnxCompressError):
    """A model file is missing, empty, truncated, not ONNX, or otherwise unreadable."""


class UnsafeModelError(ModelLoadError):
    """A model refers to files outside its own folder, or asks for unsafe deserialization."""


class OutputPathError(OnnxCompressError):
    """An output path cannot be written (it is the input itself, or its folder is unusable)."""


class DataError(OnnxCompressError):
    """Input data does not fit the model: a missing input, a wrong shape or dtype, no samples."""


class SettingError(OnnxCompressError, ValueError):
    """A setting (a pass argument, a CLI flag, a recipe value) is invalid. Names the setting."""


class MissingDependencyError(OnnxCompressError, ImportError):
    """An optional framework is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs {package}, which is not installed: "
            f'pip install "onnx-compress[{extra}]"'
        )


class ExportError(OnnxCompressError):
    """Converting a framework model to ONNX failed."""


class ParityError(ExportError):
    """The exported ONNX model does not reproduce the framework model's outputs."""


class RuntimeSessionError(OnnxCompressError):
    """ONNX Runtime could not create a session for, or run, a model."""


class PassRefusedError(OnnxCompressError):
    """A pass cannot be applied safely to this model (the message says why)."""


class BudgetError(OnnxCompressError):
    """An accuracy budget is malformed or cannot be evaluated (e.g. no validation data)."""


class RecipeError(SettingError):
    """A compression recipe is unreadable or names an unknown pass or setting."""


class DeployError(OnnxCompressError):
    """A model cannot be deployed as asked (e.g. a static batch axis with Triton batching)."""


class UnsupportedModelError(OnnxCompressError):
    """A model's architecture is outside what an operation handles (the message names the layer
    and says why), e.g. a branching network given to the narrow-student builder."""


class TrainingError(OnnxCompressError):
    """Training (recovery) cannot go on: the loss turned NaN/inf, or there is nothing to train."""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """The first meaningful line of an exception's message (its type name if it has none).

    Third-party errors (ONNX Runtime, exporters) often carry multi-line dumps; users get the
    first line, and ``--debug`` shows the whole traceback.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__
