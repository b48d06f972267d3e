"""The report as a terminal table."""

from __future__ import annotations

import math

from onnx_compress.report.recovery import recovery_lines
from onnx_compress.report.stages import Report
from onnx_compress.table import format_table, human_bytes, human_count

__all__ = ["render_text"]


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def drop_text(report: Report) -> str:
    """``0.28 +- 0.26`` (the final drop and its standard error on the validation data)."""
    se = report.final.drop_stderr
    return _num(report.final.drop, ".4f") + (f" +- {se:.4f}" if se == se else "")


def budget_text(report: Report) -> str:
    """The budget, the bound it was checked against, and the verdict."""
    if report.max_drop is None:
        return "no budget"
    margin = (f"; drop + {report.budget_margin:g} se = {report.drop_bound:.4f}"
              if report.budget_margin and report.final.drop_stderr == report.final.drop_stderr else "")
    return f"max drop {report.max_drop:g} ({report.metric}){margin}: {'met' if report.budget_met else 'NOT met'}"


def test_text(report: Report) -> str:
    """The drop on data no pass and no budget check saw (filled by the caller), with its verdict."""
    test = report.test or {}
    drop, se = test.get("drop", float("nan")), test.get("stderr", float("nan"))
    verdict = ""
    if report.max_drop is not None and drop == drop:
        verdict = "; within the budget" if drop <= report.max_drop + 1e-9 else "; OVER the budget"
    samples = f" on {int(test['samples'])} samples" if test.get("samples") else ""
    return f"{report.metric} drop {drop:.4f} +- {se:.4f}{samples}{verdict}"


def render_text(report: Report) -> str:
    """Stages as rows: decision, size, params, MACs, latency, speedup, metric, drop."""
    metric = report.metric
    rows = []
    for stage in report.stages:
        kept = stage.kept
        rows.append([
            stage.name,
            stage.decision + (f" ({stage.strength:.2f})" if stage.decision == "reduced" and stage.strength else ""),
            human_bytes(stage.size_bytes) if kept else "-",
            human_count(stage.params) if kept else "-",
            human_count(stage.macs) if kept else "-",
            _num(stage.latency_median_ms, ".3f") if kept else "-",
            _num(stage.latency_p90_ms, ".3f") if kept else "-",
            (_num(stage.speedup, ".2f") + "x") if kept and not math.isnan(stage.speedup) else "-",
            _num(stage.metric_value, ".4f"),
            _num(stage.drop, ".4f"),
            _num(stage.drop_stderr, ".4f"),
            f"{stage.seconds:.1f}" if stage.pass_name else "-",
        ])
    table = format_table(
        ["stage", "decision", "size", "params", "MACs", "median ms", "p90 ms", "speedup", metric, "drop", "+- se",
         "seconds"], rows
    )
    lines = [table, "", f"{report.model}: {report.size_ratio:.2f}x smaller, "
             f"{_num(report.final.speedup, '.2f')}x faster, {metric} drop {drop_text(report)} "
             f"[{budget_text(report)}]"]
    if report.test is not None:
        lines.append(f"held-out test data: {test_text(report)}")
    if report.timings:
        lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items()))
    if report.metric_scope:
        lines.append(f"  metric: {report.metric_scope}")
    for alt in report.alternatives:
        lines.append(f"  re-balanced: {alt['label']}: drop {alt['drop']:.4g}, {alt['size_ratio']:.2f}x smaller, "
                     f"{alt['speedup']:.2f}x faster, value {alt['value']:.2f} "
                     f"({'kept' if alt['chosen'] else 'not kept'}; {'; '.join(alt['stages'])})")
    for stage in report.stages[1:]:
        detail = stage.pass_summary or ""
        if stage.reason:
            detail = f"{detail}; {stage.reason}" if detail else stage.reason
        if detail:
            lines.append(f"  {stage.name}: {detail}")
    lines += recovery_lines(report)
    lines += [f"WARNING: {w}" for w in report.warnings]
    return "\n".join(lines)
