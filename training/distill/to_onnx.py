"""Distill an ONNX teacher into a PyTorch student and export the student: the whole run of
``onnx-compress distill``, for the API as well.

Everything that can be wrong is checked before training starts: the teacher is an ``.onnx``
file and the output does not overwrite it, the data loads, the student is built (a
``FILE.py:FACTORY`` spec runs FILE.py: only files the user trusts), and the data's arrays are
named like the parameters of the student's ``forward`` when there are several (the export
passes them positionally, in that order). Then :func:`~onnx_compress.training.distill.torch.distill`
trains the student and :func:`~onnx_compress.converters.torch.export.export_torch` writes it,
parity-checked, with the data's array names as its input names.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from onnx_compress.converters.parity import ExportResult
from onnx_compress.converters.settings import ExportSettings
from onnx_compress.data import DataSource, load_data
from onnx_compress.errors import ModelLoadError, SettingError
from onnx_compress.stats import ModelStats
from onnx_compress.training.distill.common import DistillHistory, DistillSettings, TeacherInputs

__all__ = ["DistilledStudent", "distill_to_onnx", "input_order"]


def input_order(student: Any, names: list[str]) -> list[str]:
    """The data's arrays in the order of ``forward``'s parameters (export passes them positionally)."""
    params = [p.name for p in inspect.signature(student.forward).parameters.values()]
    if len(names) > 1 and not set(names) <= set(params):
        raise SettingError(f"the data's arrays {names} must be named like the student's forward() parameters {params}")
    return sorted(names, key=params.index) if len(names) > 1 else names


@dataclasses.dataclass(frozen=True)
class DistilledStudent:
    """What :func:`distill_to_onnx` did: the training history, the export and the two models' sizes."""

    output: Path
    history: DistillHistory
    export: ExportResult
    teacher: ModelStats
    student: ModelStats
    teacher_path: Path

    def as_dict(self) -> dict[str, Any]:
        payload = {"output": str(self.output), "history": self.history.as_dict(), "export": self.export.as_dict()}
        for role, path, stats in (("teacher", self.teacher_path, self.teacher), ("student", self.output, self.student)):
            payload[role] = {"path": str(path), "params": stats.params, "macs": stats.macs,
                             "size_bytes": stats.size_bytes}
        return payload

    def table(self) -> str:
        """The epochs, then the run's summary (see ``DistillHistory.summary_table``)."""
        summary = self.history.summary_table(self.teacher, self.student, self.export.max_abs_error, self.output)
        return f"{self.history.table()}\n\n{summary}"


def distill_to_onnx(teacher: Path, student: Any, train_data: DataSource, output: Path,
                    settings: DistillSettings | None = None, *, export: ExportSettings | None = None,
                    val_data: DataSource | None = None, device: str = "auto", teacher_inputs: TeacherInputs = None,
                    teacher_output: str | None = None, progress: bool = True) -> DistilledStudent:
    """Train ``student`` (a ``torch.nn.Module`` or ``"FILE.py:FACTORY"``) on ``train_data`` to imitate
    the ONNX ``teacher`` and export it to ``output``; the arguments are those of
    :func:`~onnx_compress.training.distill.torch.distill` (``settings``: its defaults when None)
    and of ``export_torch`` (``export``: names, opset, tolerance; its input names are the data's)."""
    from onnx_compress.converters.torch.export import export_torch
    from onnx_compress.converters.torch.source import torch_module
    from onnx_compress.model_io import check_output_path, model_files
    from onnx_compress.optional import require
    from onnx_compress.stats import model_stats
    from onnx_compress.training.distill.torch import distill

    teacher = Path(teacher)
    if teacher.suffix.lower() != ".onnx":
        raise ModelLoadError(f"--teacher must be an .onnx file, got {teacher}")
    check_output_path(output, model_files(teacher))  # a missing / unreadable teacher fails here
    data = load_data(train_data)
    val = None if val_data is None else load_data(val_data)
    if isinstance(student, str):
        student = torch_module(student, "distilling into a PyTorch student", SettingError)
    order = input_order(student, list(data.names))
    student, history = distill(teacher, student, data, settings, val_data=val, device=device,
                               teacher_inputs=teacher_inputs, teacher_output=teacher_output, progress=progress)
    torch = require("torch", "exporting the student")
    example = tuple(torch.from_numpy(data.inputs[name][:1]) for name in order)
    result = export_torch(student, example, output, export, input_names=order)
    return DistilledStudent(Path(output), history, result, model_stats(teacher), model_stats(output), teacher)
