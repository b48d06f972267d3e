"""Parity of an exported ONNX model with the framework model it came from.

Right after export, the same inputs go through the framework model and through ONNX Runtime
(CPU provider, all graph optimizations, as users will run it). Each output must satisfy

    max |onnx - framework|  <=  atol + rtol * max |framework|

(an absolute floor for outputs near zero, a relative part for outputs of large magnitude such
as log-probabilities). The check runs at the example batch size and, when the batch axis is
dynamic, at a second batch size, which catches batch sizes baked into Reshape constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from onnx_compress.errors import ParityError
from onnx_compress.runtime.session import Runner, SessionSettings
from onnx_compress.table import format_table

__all__ = ["ParityCheck", "ExportResult", "check_parity"]


@dataclasses.dataclass(frozen=True)
class ParityCheck:
    """Outcome of one parity run: the batch size and the worst error per output."""

    batch: int
    max_abs_error: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.max_abs_error.values(), default=0.0)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how closely it matches the framework model."""

    path: Path
    input_names: list[str]
    output_names: list[str]
    opset: int
    external_data: bool
    parity: list[ParityCheck]

    @property
    def max_abs_error(self) -> float:
        return max((check.worst for check in self.parity), default=0.0)

    def table(self) -> str:
        """What was written (file, input and output names, opset, external data) and the parity at
        each batch size checked."""
        rows: list[list[object]] = [
            ["output", str(self.path)],
            ["inputs", ", ".join(self.input_names)],
            ["outputs", ", ".join(self.output_names)],
            ["opset", self.opset],
            ["external data", "yes" if self.external_data else "no"],
        ] + [[f"parity at batch {c.batch} (max abs error)", f"{c.worst:.3g}"] for c in self.parity]
        return format_table(["export", ""], rows, numeric=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "input_names": self.input_names,
            "output_names": self.output_names,
            "opset": self.opset,
            "external_data": self.external_data,
            "max_abs_error": self.max_abs_error,
            "parity": [dataclasses.asdict(check) for check in self.parity],
        }


def check_parity(
    onnx_path: Path,
    feeds: Mapping[str, np.ndarray],
    expected: Sequence[np.ndarray],
    *,
    atol: float,
    rtol: float,
    runner: Runner | None = None,
) -> ParityCheck:
    """Run ``onnx_path`` on ``feeds`` and compare with the framework's ``expected`` outputs.

    Raises:
        ParityError: an output differs in shape, or by more than the tolerance.
    """
    runner = runner or Runner(onnx_path, SessionSettings(provider="cpu"))
    actual = runner.run(feeds)
    if len(actual) != len(expected):
        raise ParityError(
            f"exported model has {len(actual)} outputs, the framework model {len(expected)}"
        )
    batch = int(next(iter(feeds.values())).shape[0])
    errors: dict[str, float] = {}
    for name, got, want in zip(runner.output_names, actual, expected):
        want = np.asarray(want)
        if got.shape != want.shape:
            raise ParityError(
                f"output {name!r} at batch {batch}: ONNX shape {got.shape} != framework shape {want.shape}"
            )
        if want.size == 0:
            errors[name] = 0.0
            continue
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        error = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("nan")
        limit = atol + rtol * float(np.max(np.abs(want)))
        if not error <= limit:  # also catches NaN
            raise ParityError(
                f"exported model does not match the framework model: output {name!r} at batch "
                f"{batch} differs by up to {error:.3g} (tolerance {limit:.3g})"
            )
        errors[name] = error
    return ParityCheck(batch=batch, max_abs_error=errors)
