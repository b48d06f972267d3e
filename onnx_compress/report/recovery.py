"""Recovery training in the report: the loss and validation metric per epoch, as text lines and,
in the HTML page, a table and a plot of the metric against the epoch (matplotlib PNG)."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from onnx_compress.report.stages import Report

__all__ = ["recovery_histories", "recovery_lines", "recovery_html"]


def recovery_histories(report: Report) -> list[tuple[str, dict[str, Any]]]:
    """``(stage name, recovery result dict)`` for every stage that trained (``recover``, or cut
    passes grouped with it), whose result has a per-epoch history."""
    found = []
    for stage in report.stages:
        result = stage.pass_result if isinstance(stage.pass_result, dict) else {}
        recovery = result.get("recovery") if isinstance(result.get("recovery"), dict) else result
        if recovery.get("history"):
            found.append((stage.name, recovery))
    return found


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def recovery_lines(report: Report) -> list[str]:
    """One line per training stage: ``epoch: val metric (train loss / val loss)``, best marked."""
    lines = []
    for name, recovery in recovery_histories(report):
        best = recovery.get("best_epoch")
        epochs = ", ".join(
            f"{r['epoch']}: {_f(r['metric'], '.4g')} ({_f(r.get('train_loss'), '.3g')}/{_f(r['val_loss'], '.3g')})"
            + ("*" if r["epoch"] == best else "") for r in recovery["history"])
        lines.append(f"  {name}: recovery per epoch, validation {recovery.get('metric_name', 'metric')} "
                     f"(train loss/val loss), * best: {epochs}")
    return lines


def _plot(recovery: dict[str, Any]) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    history = recovery["history"]
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.2), constrained_layout=True)
    ax.plot(epochs, [r["metric"] for r in history], "o-", color="#2a6fb0", label=f"val {recovery.get('metric_name')}")
    best = recovery.get("best_epoch")
    if best is not None and best in epochs:
        ax.plot([best], [history[epochs.index(best)]["metric"]], "*", color="#c0392b", markersize=12, label="best")
    ax.set_xlabel("epoch (0: before training)")
    ax.set_ylabel(f"validation {recovery.get('metric_name', 'metric')}")
    ax.grid(alpha=0.3)
    loss_axis = ax.twinx()
    loss_axis.plot(epochs, [r["val_loss"] for r in history], "s--", color="#7f8c8d", markersize=3, label="val loss")
    loss_axis.set_ylabel("validation loss")
    handles = ax.get_legend_handles_labels()[0] + loss_axis.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def recovery_html(report: Report) -> str:
    """The HTML section (empty when no stage trained)."""
    parts = []
    for name, recovery in recovery_histories(report):
        metric = html.escape(str(recovery.get("metric_name", "metric")))
        rows = "".join(
            f"<tr><td>{r['epoch']}{' (best)' if r['epoch'] == recovery.get('best_epoch') else ''}</td>"
            f"<td>{_f(r.get('train_loss'), '.5g')}</td><td>{_f(r['val_loss'], '.5g')}</td>"
            f"<td>{_f(r['metric'], '.5g')}</td><td>{_f(r.get('seconds'), '.1f')}</td></tr>" for r in recovery["history"])
        png = _plot(recovery)
        image = (f'<img alt="validation {metric} per epoch" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                 if png else '<p>(plot unavailable: pip install "onnx-compress[report]")</p>')
        qat = recovery.get("qat") or {}
        note = (f"<p>quantization-aware ({html.escape(str(qat.get('mode')))} int8): {len(qat.get('nodes', []))} nodes, "
                f"{len(qat.get('ranges', {}))} activation ranges handed to the quantize pass</p>" if qat else "")
        parts.append(f"<h3>{html.escape(name)}</h3>{note}{image}<table><tr><th>epoch</th><th>train loss</th>"
                     f"<th>val loss</th><th>val {metric}</th><th>s</th></tr>{rows}</table>")
    return "<h2>Recovery training</h2>" + "".join(parts) if parts else ""
