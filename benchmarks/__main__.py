"""``python -m benchmarks [TOPIC [ARGS...]]``: run one benchmark, or all of them in turn."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def _topics() -> list[str]:
    folder = Path(__file__).parent
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(folder)])
                  if m.name.startswith("bench_"))


def main(argv: list[str]) -> int:
    topics = _topics()
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: python -m benchmarks [TOPIC [ARGS...]]\ntopics: {', '.join(topics) or 'none yet'}")
        return 0
    if argv:
        if argv[0] not in topics:
            print(f"unknown benchmark {argv[0]!r}; topics: {', '.join(topics)}", file=sys.stderr)
            return 2
        return int(importlib.import_module(f"benchmarks.bench_{argv[0]}").main(argv[1:]) or 0)
    for topic in topics:
        print(f"\n=== {topic} ===", flush=True)
        status = importlib.import_module(f"benchmarks.bench_{topic}").main([])
        if status:
            return int(status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
