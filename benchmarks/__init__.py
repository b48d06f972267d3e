"""Side-by-side benchmarks against the tools a user would pick instead.

Each ``benchmarks/bench_<topic>.py`` has a ``main(argv)`` that measures, prints a table and
writes ``artifacts/benchmarks/<topic>.json``. ``python -m benchmarks`` runs them all;
``python -m benchmarks <topic> ...`` runs one (``make bench`` runs them all).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from onnx_compress.jsonable import jsonable

#: where every benchmark writes its ``<topic>.json`` unless ``--out`` says otherwise
RESULTS = Path(__file__).resolve().parents[1] / "artifacts" / "benchmarks"


def parser(topic: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks <topic>`` (``doc``'s first line describes it) with the flags
    every benchmark takes: ``--threads`` (ONNX Runtime intra-op threads) and ``--out``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {topic}", description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (writes {topic}.json there)")
    return parser


def environment() -> dict[str, Any]:
    """Where a benchmark ran: ONNX Runtime's version, the CPU, the load average at the start
    (:func:`write_results` adds the load average at the end)."""
    import onnxruntime

    from onnx_compress.runtime import detect_cpu

    return {"onnxruntime": onnxruntime.__version__, "cpu": detect_cpu().describe(),
            "load_average": list(os.getloadavg())}


def write_results(folder: Path, topic: str, results: Any) -> Path:
    """Write ``folder/<topic>.json`` (every benchmark's results file) and say where; a results
    mapping with an ``environment`` (:func:`environment`) gets the load average at the end."""
    if isinstance(results, dict) and isinstance(results.get("environment"), dict):
        results["environment"]["load_average_after"] = list(os.getloadavg())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{topic}.json"
    path.write_text(json.dumps(jsonable(results), indent=2, default=str))
    print(f"\nwrote {path}")
    return path
