"""Plain JSON values from the project's result objects (one converter for reports, results, CLI)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """Dataclasses (their ``ir.Model`` fields left out) and mappings as dicts, tuples and sets as
    lists, numpy scalars/arrays as numbers/lists, paths as text, enums as their value; anything
    else as it is (``json.dumps(..., default=str)`` writes what JSON has no type for)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not isinstance(getattr(value, f.name), ir.Model)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value
