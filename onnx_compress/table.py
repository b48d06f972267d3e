"""Plain-text tables for the terminal (CLI output, sample scripts, reports)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table", "human_bytes", "human_count"]


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, numeric: bool = True
) -> str:
    """Columns sized to their content; the first column left-aligned, the others right-aligned
    (numbers) or, with ``numeric=False`` (key/value tables of text), left-aligned too."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i == 0 or not numeric else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def human_bytes(count: int | float) -> str:
    """1234567 -> '1.18 MiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def human_count(count: int | float) -> str:
    """1234567 -> '1.23M'."""
    value = float(count)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def change_text(before: int, after: int) -> str:
    """``"225,034 -> 43,738 (-81%)"``: a count before and after, with the relative change."""
    pct = f" ({(after - before) / before:+.0%})" if before else ""
    return f"{before:,} -> {after:,}{pct}"
