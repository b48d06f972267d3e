"""The report's renderings: the drop with its uncertainty, the test verdict, where the time went,
and a plot whose labels do not overlap."""

from __future__ import annotations

import io

import pytest

from onnx_compress.report import Report, StageReport
from onnx_compress.report.html import plot_png, render_html
from onnx_compress.report.text import render_text


def _report() -> Report:
    def stage(name: str, kib: float, ms: float, top1: float, decision: str = "applied") -> StageReport:
        return StageReport(name=name, pass_name=None if name == "original" else name.split(". ")[1],
                           decision=decision, size_bytes=int(kib * 1024), latency_median_ms=ms, speedup=0.25 / ms,
                           metric_value=top1, drop=98.06 - top1, drop_stderr=0.0 if top1 == 98.06 else 0.26,
                           seconds=1.5)
    # stages that share a size (lowrank, the no-op 4-bit step) or nearly share a latency and a metric
    stages = [stage("original", 890, 0.25, 98.06, "original"), stage("1. normalize", 890, 0.25, 98.06, "no change"),
              stage("2. prune_structured", 150, 0.072, 97.78), stage("3. lowrank", 140, 0.070, 97.78),
              stage("4. quantize", 140, 0.070, 97.78, "no change"), stage("5. quantize", 40, 0.074, 97.78)]
    return Report(model="m.onnx", recipe={"name": "small"}, metric="top1", max_drop=0.5, stages=stages,
                  budget_met=True, budget_margin=0.84, timings={"total": 12.0, "validation of candidates": 2.0},
                  test={"drop": 0.56, "stderr": 0.39, "samples": 360})


def test_text_and_html_show_the_drop_with_its_margin_the_test_verdict_and_the_time():
    report = _report()
    text = render_text(report)
    assert "drop 0.2800 +- 0.2600" in text
    assert f"drop + 0.84 se = {0.28 + 0.84 * 0.26:.4f}: met" in text
    assert "held-out test data: top1 drop 0.5600 +- 0.3900 on 360 samples; OVER the budget" in text
    assert "time: total 12.0 s" in text
    page = render_html(report)
    assert "OVER the budget" in page and "validation of candidates 2.0 s" in page
    data = report.as_dict()
    assert data["summary"]["drop_bound"] == pytest.approx(0.28 + 0.84 * 0.26)
    assert data["test"]["drop"] == 0.56 and data["stages"][2]["drop_stderr"] == 0.26


def test_plot_labels_of_stages_that_share_a_value_do_not_overlap():
    import matplotlib  # the 'report' extra, installed for the tests

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from onnx_compress.report import html as html_module

    png = plot_png(_report())
    assert png is not None and Image.open(io.BytesIO(png)).size[0] > 500
    # the labelling helper on the same points (the PNG's text cannot be read back): no two
    # label boxes may overlap

    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = [0.87, 0.87, 0.146, 0.137, 0.039], [98.06, 98.06, 97.78, 97.78, 97.78]
    labels = ["original", "1. normalize", "2. prune_structured", "3. lowrank, 4. quantize", "5. quantize"]
    ax.plot(xs, ys, "o-")
    ax.set_xscale("log")
    html_module._annotate(ax, xs, ys, labels)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    overlaps = [(ax.texts[i].get_text(), ax.texts[j].get_text()) for i in range(len(boxes))
                for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    plt.close(fig)
    assert len(boxes) == 5 and not overlaps, overlaps
