"""Recovery training in the report: the loss and validation metric per epoch in the text and HTML
renderings, with a plot of the metric against the epoch."""

from __future__ import annotations

import base64
import io
import re

from onnx_compress.report import Report, StageReport
from onnx_compress.report.html import render_html
from onnx_compress.report.text import render_text


def _report() -> Report:
    history = [{"epoch": 0, "train_loss": None, "val_loss": 7.06, "metric": 65.06, "metric_min": None, "seconds": 0.0},
               {"epoch": 1, "train_loss": 3.35, "val_loss": 3.56, "metric": 89.59, "metric_min": None, "seconds": 1.0},
               {"epoch": 2, "train_loss": 1.80, "val_loss": 2.71, "metric": 94.05, "metric_min": None, "seconds": 0.8}]
    recovery = {"metric_name": "top1", "best_epoch": 2, "history": history,
                "qat": {"mode": "static", "nodes": ["a", "b"], "ranges": {"x": [0, 1]}}}
    stages = [StageReport(name="original", pass_name=None, decision="original", metric_value=98.06,
                          size_bytes=900_000, latency_median_ms=0.25),
              StageReport(name="2. prune_structured+recover", pass_name="prune_structured+recover", decision="applied",
                          metric_value=97.8, size_bytes=30_000, latency_median_ms=0.06,
                          pass_result={"steps": [], "recovery": recovery})]
    return Report(model="m.onnx", recipe={"name": "tiny"}, metric="top1", max_drop=0.5, stages=stages, budget_met=True)


def test_epochs_are_in_the_text_and_the_html_with_a_plot():
    report = _report()
    text = render_text(report)
    assert ("2. prune_structured+recover: recovery per epoch, validation top1 (train loss/val loss), * best: "
            "0: 65.06 (-/7.06), 1: 89.59 (3.35/3.56), 2: 94.05 (1.8/2.71)*") in text
    page = render_html(report)
    section = page[page.index("<h2>Recovery training</h2>"):]
    assert "<td>2 (best)</td><td>1.8</td><td>2.71</td><td>94.05</td>" in section
    assert "2 nodes, 1 activation ranges" in section
    png = re.search(r'alt="validation top1 per epoch" src="data:image/png;base64,([^"]+)"', section)
    from PIL import Image

    assert png is not None and Image.open(io.BytesIO(base64.b64decode(png.group(1)))).size[0] >= 500


def test_no_training_no_section():
    report = _report()
    report.stages[1].pass_result = {}
    assert "Recovery training" not in render_html(report) and "recovery per epoch" not in render_text(report)
