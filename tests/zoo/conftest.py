"""The zoo's helpers (hand-built graphs, torch and Keras architectures, the matrix) import by name."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
