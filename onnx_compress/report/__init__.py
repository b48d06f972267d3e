"""The compression report: per stage size, parameters, MACs, latency, metric and what each pass did.

- :mod:`.stages`: the data (``Report``, ``StageReport``, ``Report.as_dict``); it renders nothing;
- :mod:`.text`: the terminal table;
- :mod:`.html`: the HTML page with a plot of size and latency against the metric (matplotlib,
  embedded PNG);
- :mod:`.files`: ``report.json`` and ``report.html`` written atomically (:func:`save_report`).

Imports run one way: stages <- text <- html <- files.
"""

from onnx_compress.report.files import render_json, save_report
from onnx_compress.report.stages import Report, StageReport
from onnx_compress.report.text import render_text

__all__ = ["Report", "StageReport", "render_json", "render_text", "save_report"]
