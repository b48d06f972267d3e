"""The report's files: ``report.json`` (the data) and ``report.html`` (the page with the plot)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from onnx_compress.atomic import write_atomic
from onnx_compress.report.html import render_html
from onnx_compress.report.stages import Report

__all__ = ["render_json", "save_report"]


def render_json(report: Report) -> str:
    """The report as indented JSON (NaN for what was not measured)."""
    return json.dumps(report.as_dict(), indent=2, allow_nan=True)


def save_report(report: Report, folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json`` and ``report.html`` into ``folder`` (created if missing), atomically."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "html": out / "report.html"}
    write_atomic(paths["json"], render_json(report))
    write_atomic(paths["html"], render_html(report))
    return paths
