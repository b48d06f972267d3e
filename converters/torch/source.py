"""A PyTorch model named by the user as ``FILE.py:NAME``, and its weights from a checkpoint.

``FILE.py`` is imported and run: arbitrary Python code, so only files the user trusts (the
CLI's ``export torch`` and ``distill --student`` say so). Checkpoints are read with
``torch.load(weights_only=True)``, which cannot run code.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from onnx_compress.errors import ExportError, ModelLoadError, SettingError, one_line
from onnx_compress.optional import require

__all__ = ["load_factory", "torch_module", "load_weights", "example_inputs"]


def load_factory(spec: str) -> Any:
    """Resolve ``FILE.py:NAME`` to the callable NAME defined in FILE.py (runs FILE.py)."""
    file_part, sep, name = spec.rpartition(":")
    if not sep or not file_part or not name:
        raise SettingError(f"expected FILE.py:NAME, got {spec!r}")
    path = Path(file_part)
    if not path.is_file():
        raise ModelLoadError(f"Python file not found: {path}")
    module_name = f"_onnx_compress_user_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelLoadError(f"not an importable Python file: {path}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent.resolve()))  # so the file can import its neighbours
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {one_line(exc)}") from exc
    finally:
        sys.path.pop(0)
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        available = sorted(
            n for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module_name
        )
        raise SettingError(
            f"{path} defines no callable {name!r}; callables defined there: {', '.join(available) or 'none'}"
        )
    return factory


def torch_module(spec: str, purpose: str, error: type[Exception] = ExportError) -> Any:
    """The torch.nn.Module that ``FILE.py:NAME`` builds (runs FILE.py); ``error`` if NAME() fails."""
    torch = require("torch", purpose)
    factory = load_factory(spec)
    try:
        module = factory()
    except Exception as exc:
        raise error(f"{spec}() failed: {type(exc).__name__}: {one_line(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise SettingError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def load_weights(module: Any, weights: Path, source: str) -> None:
    """Load a state_dict checkpoint into ``module`` with ``torch.load(weights_only=True)`` (it cannot
    run code); a ``{"state_dict": ...}`` wrapper is unwrapped. ``source`` names the module in errors."""
    torch = require("torch", "loading PyTorch weights")
    if not weights.is_file():
        raise ModelLoadError(f"checkpoint not found: {weights}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {weights} with weights_only=True ({type(exc).__name__}: {one_line(exc)})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        module.load_state_dict(state)
    except Exception as exc:
        raise ModelLoadError(f"{weights} does not fit {source}: {one_line(exc)}") from exc


def example_inputs(shapes: list[tuple[int, ...]] | None, dtypes: list[str] | None = None) -> tuple[Any, ...]:
    """Example tensors for an export, one per input, seeded: ``randn`` for float dtypes, integers in
    [0, 100) for the others (token ids, indices). ``dtypes`` are torch names (``float32``, ``int64``),
    one per shape (default: all ``float32``)."""
    if not shapes:
        raise SettingError("--input-shape is required (e.g. --input-shape 1x1x28x28), once per input")
    dtypes = dtypes or ["float32"] * len(shapes)
    if len(dtypes) != len(shapes):
        raise SettingError("give one --input-dtype per --input-shape, or none")
    torch = require("torch", "exporting a PyTorch model")
    generator = torch.Generator().manual_seed(0)
    examples = []
    for shape, dtype in zip(shapes, dtypes):
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise SettingError(f"unknown --input-dtype {dtype!r} (e.g. float32, int64)")
        if torch_dtype.is_floating_point:
            examples.append(torch.randn(shape, generator=generator).to(torch_dtype))
        else:
            examples.append(torch.randint(0, 100, shape, generator=generator).to(torch_dtype))
    return tuple(examples)
