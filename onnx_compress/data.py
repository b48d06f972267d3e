"""Data sets for calibration, validation and benchmarking.

A data set is a set of named arrays that share their first (batch) axis: one array per model
input, keyed by the input's name, plus an optional ``labels`` array (integer class ids) used
by the ``top1`` metric. On disk it is an ``.npz`` file with exactly those keys; the Python API
also accepts a dict of arrays or an iterable of such dicts (concatenated along axis 0).

:meth:`Dataset.check_against` compares a data set with a model's inputs before anything runs,
so a missing input, a wrong dtype or a wrong shape is reported with the model's expectation
instead of an ONNX Runtime error from deep inside a pass.

``.npz`` files are read with ``allow_pickle=False``: a data file can never run code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnx_compress.atomic import write_atomic
from onnx_compress.errors import DataError

__all__ = ["LABELS_KEY", "InputSpec", "Dataset", "load_data", "input_specs", "same_data", "synthetic_inputs", "DataSource"]

#: the reserved key of the labels array in a data file
LABELS_KEY = "labels"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model expects for one input: name, numpy dtype, and shape.

    A dimension is an ``int`` when static, or a ``str`` / ``None`` when symbolic (any size).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join(
            str(d) if isinstance(d, int) else (d or "?") for d in self.shape
        )
        return f"{self.name}: {self.dtype.name}[{dims}]"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The real inputs of a model (initializers listed as inputs are skipped)."""
    specs = []
    for value in model.graph.inputs:
        if value.const_value is not None or value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype("float32")
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) else None)
                          for d in value.shape)
        specs.append(InputSpec(name=str(value.name), dtype=np.dtype(dtype), shape=shape))
    return specs


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Named arrays sharing their first axis, plus optional integer labels."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise DataError("data set has no input arrays")
        sizes = {name: (arr.shape[0] if arr.ndim else None) for name, arr in self.inputs.items()}
        if any(size is None for size in sizes.values()):
            scalars = [name for name, size in sizes.items() if size is None]
            raise DataError(f"data arrays need a batch axis; these are scalars: {scalars}")
        if len(set(sizes.values())) != 1:
            raise DataError(f"data arrays disagree on the number of samples: {sizes}")
        n = next(iter(sizes.values()))
        if n == 0:
            raise DataError("data set is empty (0 samples)")
        if self.labels is not None:
            if self.labels.ndim != 1 or self.labels.shape[0] != n:
                raise DataError(
                    f"labels must be a 1-D array of {n} class ids, got shape {self.labels.shape}"
                )
            if not np.issubdtype(self.labels.dtype, np.integer):
                raise DataError(f"labels must be integer class ids, got dtype {self.labels.dtype}")

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def names(self) -> list[str]:
        return list(self.inputs)

    def subset(self, indices: Sequence[int] | np.ndarray | slice) -> Dataset:
        """A new data set with the selected samples."""
        return Dataset(
            inputs={name: np.ascontiguousarray(arr[indices]) for name, arr in self.inputs.items()},
            labels=None if self.labels is None else self.labels[indices],
        )

    def take(self, count: int) -> Dataset:
        """The first ``count`` samples (all of them when there are fewer)."""
        return self.subset(slice(0, min(count, len(self))))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Input feeds of at most ``batch_size`` samples, in order."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield {name: arr[start : start + batch_size] for name, arr in self.inputs.items()}

    def check_against(self, specs: Sequence[InputSpec], *, what: str = "data") -> None:
        """Raise DataError unless every model input is present with a fitting dtype and shape."""
        expected = ", ".join(spec.describe() for spec in specs)
        missing = [spec.name for spec in specs if spec.name not in self.inputs]
        if missing:
            raise DataError(
                f"{what} is missing model input(s) {missing}; the model's inputs are: {expected}; "
                f"the data has: {sorted(self.inputs)}"
            )
        for spec in specs:
            arr = self.inputs[spec.name]
            if arr.dtype != spec.dtype:
                raise DataError(
                    f"{what}: input {spec.name!r} has dtype {arr.dtype}, the model expects "
                    f"{spec.dtype} (convert with .astype(np.{spec.dtype.name}))"
                )
            if spec.shape is None:
                continue
            if arr.ndim != len(spec.shape):
                raise DataError(
                    f"{what}: input {spec.name!r} has shape {arr.shape} (rank {arr.ndim}), "
                    f"the model expects {spec.describe()} (rank {len(spec.shape)})"
                )
            for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                if axis == 0:
                    continue  # the batch axis is checked by running batches of the right size
                if isinstance(want, int) and got != want:
                    raise DataError(
                        f"{what}: input {spec.name!r} has shape {arr.shape}, the model expects "
                        f"{spec.describe()} (axis {axis} must be {want})"
                    )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the data set to an ``.npz`` file atomically."""
        out = Path(path)
        arrays = dict(self.inputs)
        if self.labels is not None:
            arrays[LABELS_KEY] = self.labels
        return write_atomic(out, lambda handle: np.savez(handle, **arrays))


def same_data(a: Dataset, b: Dataset) -> bool:
    """Whether two data sets hold the same arrays (the same inputs, values and order)."""
    if len(a) != len(b) or a.names != b.names:
        return False
    return all(np.array_equal(a.inputs[name], b.inputs[name]) for name in a.names)


DataSource = Dataset | str | os.PathLike[str] | Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]]


def _from_mapping(arrays: Mapping[str, np.ndarray]) -> Dataset:
    inputs = {str(k): np.asarray(v) for k, v in arrays.items() if k != LABELS_KEY}
    labels = arrays.get(LABELS_KEY)
    return Dataset(inputs=inputs, labels=None if labels is None else np.asarray(labels))


def _load_npz(path: Path) -> Dataset:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"expected an .npz data file, got a directory: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # a corrupt archive surfaces as zipfile, zlib, tokenize, Unicode... errors
        raise DataError(
            f"not a readable .npz data file ({type(exc).__name__}: {exc}): {path}"
        ) from exc
    if not arrays:
        raise DataError(f"data file holds no arrays: {path}")
    try:
        return _from_mapping(arrays)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


def load_data(source: DataSource) -> Dataset:
    """Build a :class:`Dataset` from an ``.npz`` path, a dict of arrays, or an iterable of dicts."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _load_npz(Path(source))
    if isinstance(source, Mapping):
        return _from_mapping(source)
    chunks = [_from_mapping(item) for item in source]
    if not chunks:
        raise DataError("data iterable yielded no batches")
    names = chunks[0].names
    for chunk in chunks[1:]:
        if chunk.names != names:
            raise DataError(f"data batches disagree on input names: {names} vs {chunk.names}")
    has_labels = [chunk.labels is not None for chunk in chunks]
    if any(has_labels) and not all(has_labels):
        raise DataError("some data batches have labels and others do not")
    return Dataset(
        inputs={name: np.concatenate([c.inputs[name] for c in chunks]) for name in names},
        labels=np.concatenate([c.labels for c in chunks]) if all(has_labels) else None,  # type: ignore[misc]
    )


def synthetic_inputs(
    specs: Sequence[InputSpec],
    batch: int = 1,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random inputs that fit ``specs``, for benchmarking when no data is given.

    The first axis is ``batch``; other symbolic axes take their size from ``dims`` (keyed by
    the dimension's name) and must be named there. Float inputs are standard normal; integer
    inputs are token-like ids in [0, 100), except names containing ``mask`` (all ones) and
    ``type`` (all zeros), the conventions of transformer inputs; booleans are True.
    """
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.shape is None:
            raise DataError(f"input {spec.name!r} has no known rank; pass data instead")
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(batch if axis == 0 and dim in (0, -1) else dim)
            elif axis == 0:
                shape.append(batch)
            elif dim and dim in dims:
                shape.append(int(dims[dim]))
            else:
                raise DataError(
                    f"input {spec.describe()}: axis {axis} is symbolic ({dim or 'unnamed'}); "
                    f"give its size (e.g. --dim {dim or 'NAME'}=64) or pass data"
                )
        lowered = spec.name.lower()
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feeds[spec.name] = np.ones(shape, dtype=np.bool_)
        elif "mask" in lowered:
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif "type" in lowered:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 100, size=shape).astype(spec.dtype)
    return feeds
