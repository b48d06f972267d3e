"""The report as a self-contained HTML page with an embedded PNG plot (matplotlib).

The plot has two panels: the metric against file size, and against median latency, one point
per kept stage, joined in stage order and labelled, with the budget line when there is one.
Labels whose points fall close together (stages that share a size, a latency or a metric value)
are stacked one above the other beside their points (in stage order), so none is printed over
another.
Without matplotlib the page is written without the plot and says which extra to install.
"""

from __future__ import annotations

import base64
import html
import io
import math

from onnx_compress.report.recovery import recovery_html
from onnx_compress.report.stages import Report
from onnx_compress.report.text import budget_text, drop_text, render_text, test_text

__all__ = ["render_html", "plot_png"]


def plot_png(report: Report) -> bytes | None:
    """The size/latency-vs-metric plot as PNG bytes, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    kept = [s for s in report.stages if s.kept and not math.isnan(s.metric_value)]
    if not kept:
        return None
    # stages that handed on the same model (no change) share one point and one label
    points: list[tuple[str, float, float, float]] = []  # label, size MiB, latency ms, metric
    for stage in kept:
        key = (stage.size_bytes / 2**20, stage.latency_median_ms, stage.metric_value)
        if points and points[-1][1:] == key:
            points[-1] = (f"{points[-1][0]}, {stage.name}", *key)
        else:
            points.append((stage.name, *key))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    panels = [
        ("size (MiB, log scale)", [p[1] for p in points]),
        ("median latency (ms)", [p[2] for p in points]),
    ]
    for ax, (label, xs) in zip(axes, panels):
        ys = [p[3] for p in points]
        ax.plot(xs, ys, "o-", color="#2a6fb0")
        if label.startswith("size"):
            ax.set_xscale("log")
        _annotate(ax, xs, ys, [p[0] for p in points])
        if report.max_drop is not None:
            reference = report.original.metric_value
            higher_is_better = report.metric != "max_abs"
            limit = reference - report.max_drop if higher_is_better else reference + report.max_drop
            ax.axhline(limit, color="#c0392b", linestyle="--", linewidth=1, label="budget")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(report.metric)
        ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


#: a label that would overlap one already placed moves by one line, at most this many times
_MAX_LINES = 12


def _annotate(ax: object, xs: list[float], ys: list[float], labels: list[str]) -> None:
    """Label each point; a label whose text box would overlap one already placed (stages that
    share a size, a latency or a metric value) moves one line further from its point."""
    ax.margins(x=0.15, y=0.2)  # type: ignore[attr-defined]
    ax.autoscale_view()  # type: ignore[attr-defined]
    figure = ax.figure  # type: ignore[attr-defined]
    figure.canvas.draw()  # lay the figure out first: text boxes are measured in its final coordinates
    renderer = figure.canvas.get_renderer()
    to_axes = ax.transData + ax.transAxes.inverted()  # type: ignore[attr-defined]
    placed: list[object] = []
    for x, y, text in zip(xs, ys, labels):
        fx, fy = to_axes.transform((x, y))
        below = fy > 0.5  # near the top: stack downwards, else upwards
        right = fx > 0.65  # near the right edge: the label goes to the left of its point
        for line in range(_MAX_LINES):
            offset = (-6 if right else 6, (-12 if below else 6) + (-11 if below else 11) * line)
            note = ax.annotate(text, (x, y), textcoords="offset points", xytext=offset,  # type: ignore[attr-defined]
                               fontsize=8, va="center", ha="right" if right else "left")
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or line == _MAX_LINES - 1:
                placed.append(box)
                break
            note.remove()


def render_html(report: Report) -> str:
    """One self-contained page: the verdict, warnings, the plot, the stage table, each pass's result."""
    png = plot_png(report)
    image = (
        f'<img alt="size and latency against {html.escape(report.metric)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        if png else '<p>(plot unavailable: pip install "onnx-compress[report]")</p>'
    )
    stage_rows = []
    for s in report.stages:
        stage_rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                s.name, s.decision, s.pass_summary, s.reason,
                ", ".join(f"{t.get('strength', 0):.3g}: drop {t.get('drop', float('nan')):.4g} "
                          f"+- {t.get('stderr', 0.0):.2g} ({'ok' if t.get('holds') else 'over budget'}"
                          f"{'; ' + t['note'] if t.get('note') else ''}; {t.get('seconds', 0.0):.1f} s)"
                          for t in s.trials),
                ", ".join(f"{k} {v:.1f} s" if isinstance(v, float) else f"{k} {v}" for k, v in s.timings.items()),
            )) + "</tr>"
        )
    test = (f"<p><b>held-out test data</b> (no pass and no budget check saw it): {html.escape(test_text(report))}</p>"
            if report.test is not None else "")
    warnings = "".join(f"<p class=warn>WARNING: {html.escape(w)}</p>" for w in report.warnings)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>onnx-compress report: {html.escape(report.model)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} pre{{background:#f6f6f6;padding:1em;overflow:auto}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:90%}}
.warn{{color:#c0392b;font-weight:bold}}</style></head><body>
<h1>onnx-compress report</h1>
<p>model: <code>{html.escape(report.model)}</code>; recipe: <code>{html.escape(str(report.recipe.get("name", "")))}</code>;
metric: {html.escape(report.metric)}; drop {html.escape(drop_text(report))} on the validation data;
budget: {html.escape(budget_text(report))}</p>
{test}
<p>time: {html.escape(", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items()))}</p>
{warnings}
{image}
<h2>Stages</h2>
<pre>{html.escape(render_text(report))}</pre>
<h2>What each pass did</h2>
<table><tr><th>stage</th><th>decision</th><th>result</th><th>reason</th><th>budget search trials
(strength: drop +- standard error)</th><th>time</th></tr>
{''.join(stage_rows)}</table>
{recovery_html(report)}
<h2>Environment</h2>
<pre>{html.escape(str(report.environment))}</pre>
</body></html>
"""
