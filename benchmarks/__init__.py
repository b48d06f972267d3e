"""Side-by-side benchmarks against the tools a user would pick instead.

Each ``benchmarks/bench_<topic>.py`` has a ``main(argv)`` that measures, prints a table and
writes ``artifacts/benchmarks/<topic>.json``. ``python -m benchmarks`` runs them all;
``python -m benchmarks <topic> ...`` runs one (``make bench`` runs them all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays as plain numbers and lists; anything else as its text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_results(folder: Path, topic: str, results: Any) -> Path:
    """Write ``folder/<topic>.json`` (every benchmark's results file) and say where."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{topic}.json"
    path.write_text(json.dumps(results, indent=2, default=_jsonable))
    print(f"\nwrote {path}")
    return path
