"""The compression report: per stage size, parameters, MACs, latency, metric and what each pass did.

- :mod:`.stages`: the data (``Report``, ``StageReport``) and its JSON form;
- :mod:`.text`: the terminal table;
- :mod:`.html`: the HTML page with a plot of size and latency against the metric (matplotlib,
  embedded PNG).
"""

from onnx_compress.report.stages import Report, StageReport

__all__ = ["Report", "StageReport"]
