"""Reading and writing ONNX models safely.

Loading
    :func:`load_model` returns an ``onnx_ir.Model``. Before any tensor data is read, every
    external-data location in the file is checked: absolute paths, paths that climb out of the
    model's folder (``../``) and symbolic links that resolve outside it are refused
    (:class:`~onnx_compress.errors.UnsafeModelError`), and a missing or too-short data file is
    reported by name. Large tensors stay memory-mapped (onnx-ir's lazy external tensors), so a
    model over 2 GB loads without copying its weights.

Saving
    :func:`save_model` writes atomically: everything goes to a temporary folder beside the
    output, then is renamed into place, so a failure never leaves a half-written model. Models
    whose weights exceed :data:`EXTERNAL_DATA_THRESHOLD_BYTES` are written with ONNX external data
    in one file next to the model (``NAME.onnx.data``, relative location); smaller models are one
    self-contained file. Writing over the input model, or over a data file it reads from, is
    refused.

Running
    :func:`model_bytes` serializes a model for ONNX Runtime when it fits in one protobuf
    (< 2 GB); :func:`materialized_path` saves a larger one to a temporary folder instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnx_compress.errors import ModelLoadError, OutputPathError, UnsafeModelError

__all__ = [
    "EXTERNAL_DATA_THRESHOLD_BYTES",
    "PROTOBUF_LIMIT_BYTES",
    "load_model",
    "save_model",
    "model_files",
    "model_bytes",
    "needs_file",
    "check_model",
    "materialized_path",
    "weights_nbytes",
    "external_data_locations",
    "check_output_path",
    "staged_output",
]

logger = logging.getLogger(__name__)

#: protobuf cannot serialize a message of 2 GiB or more
PROTOBUF_LIMIT_BYTES = 2**31 - 1
#: above this many bytes of weights a model is saved with external data (headroom for the graph)
EXTERNAL_DATA_THRESHOLD_BYTES = int(1.8 * 2**30)
#: the smallest tensor moved to the external data file when a model is saved with external data
_EXTERNAL_TENSOR_MIN_BYTES = 1024


PathLike = str | os.PathLike[str]


def _iter_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto a graph holds: initializers, sparse ones, Constant/attribute tensors,
    recursively through subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _iter_tensor_protos(attr.g)
            for sub in attr.graphs:
                yield from _iter_tensor_protos(sub)


def _parse_model_proto(path: Path) -> onnx.ModelProto:
    """Parse the protobuf of ``path`` without touching external data, or raise ModelLoadError."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"expected an ONNX file, got a directory: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, RuntimeWarning-as-error, OSError...
        raise ModelLoadError(f"not a readable ONNX model ({type(exc).__name__}): {path}") from exc
    if not proto.HasField("graph") or proto.ir_version <= 0 or not proto.opset_import:
        raise ModelLoadError(
            f"not an ONNX model (no graph, IR version or opset; truncated or another format?): {path}"
        )
    if len(proto.graph.output) == 0:
        raise ModelLoadError(f"ONNX model has no graph outputs (truncated?): {path}")
    bad = _first_undecodable_text(proto)
    if bad is not None:
        raise ModelLoadError(f"corrupt ONNX model: text field {bad!r} is not valid UTF-8: {path}")
    return proto


def _first_undecodable_text(message: Any) -> str | None:
    """The name of the first string field holding bytes that are not UTF-8 (a corrupt file).

    ONNX is proto2, whose parser does not validate UTF-8: a damaged name or doc string parses
    as raw bytes and only fails much later, deep inside serialization.
    """
    stack = [message]
    while stack:
        current = stack.pop()
        for field, value in current.ListFields():
            repeated = getattr(field, "is_repeated", None)
            if repeated is None:  # protobuf < 5
                repeated = field.label == field.LABEL_REPEATED
            if field.type == field.TYPE_MESSAGE:
                if repeated:
                    stack.extend(value)
                else:
                    stack.append(value)
            elif field.type == field.TYPE_STRING:
                values = value if repeated else [value]
                if any(isinstance(v, bytes) for v in values):
                    return field.full_name
    return None


def external_data_locations(proto: onnx.ModelProto) -> list[tuple[str, int, int | None]]:
    """(location, offset, length) of every externally stored tensor, as written in the file."""
    found: list[tuple[str, int, int | None]] = []
    for tensor in _iter_tensor_protos(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
        found.append((location, offset, length))
    return found


def _check_external_data(proto: onnx.ModelProto, model_path: Path) -> list[Path]:
    """Refuse external-data locations that leave the model's folder; return the data files.

    The check is lexical (absolute paths, ``..`` segments) and physical (the resolved path,
    after symbolic links, must stay inside the resolved model folder). Missing files and
    tensors that reach past the end of their file are reported before anything is read.
    """
    base = model_path.parent.resolve()
    data_files: dict[Path, int] = {}
    for location, offset, length in external_data_locations(proto):
        if not location:
            raise UnsafeModelError(f"{model_path}: a tensor is stored externally with no location")
        pure = Path(location)
        if pure.is_absolute() or location.startswith(("/", "\\")) or ":" in pure.parts[0]:
            raise UnsafeModelError(
                f"{model_path}: external data location {location!r} is absolute; "
                "only paths inside the model's folder are accepted"
            )
        if ".." in pure.parts:
            raise UnsafeModelError(
                f"{model_path}: external data location {location!r} leaves the model's folder"
            )
        resolved = (model_path.parent / pure).resolve()
        if not resolved.is_relative_to(base):
            raise UnsafeModelError(
                f"{model_path}: external data location {location!r} resolves to {resolved}, "
                "outside the model's folder (symbolic link?)"
            )
        if not resolved.is_file():
            raise ModelLoadError(f"{model_path}: external data file not found: {location}")
        end = offset + (length or 0)
        data_files[resolved] = max(data_files.get(resolved, 0), end)
    for data_file, needed in data_files.items():
        actual = data_file.stat().st_size
        if needed > actual:
            raise ModelLoadError(
                f"{model_path}: external data file {data_file.name} is truncated "
                f"({actual} bytes, tensors need {needed})"
            )
    return sorted(data_files)


def model_files(path: PathLike) -> list[Path]:
    """The model file and every external data file it reads (resolved paths)."""
    model_path = Path(path)
    proto = _parse_model_proto(model_path)
    return [model_path.resolve(), *_check_external_data(proto, model_path)]


def load_model(path: PathLike) -> ir.Model:
    """Load an ONNX model as an ``onnx_ir.Model`` after checking the file is safe to read.

    Raises:
        ModelLoadError: the file is missing, empty, truncated, not ONNX, or its data is missing.
        UnsafeModelError: an external-data location leaves the model's folder.
    """
    model_path = Path(path)
    proto = _parse_model_proto(model_path)
    _check_external_data(proto, model_path)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise ModelLoadError(f"ONNX model could not be read ({type(exc).__name__}: {exc}): {path}") from exc
    _check_inputs_defined(model.graph, path)
    # Lazy external tensors resolve their location against this folder.
    ir.external_data.set_base_dir(model.graph, model_path.parent.resolve())
    if weights_nbytes(model) <= EXTERNAL_DATA_THRESHOLD_BYTES:
        _materialize_external_tensors(model)
    return model


def _check_inputs_defined(graph: ir.Graph, path: PathLike) -> None:
    """Refuse a main graph whose nodes read values that nothing defines.

    Such a graph (a node deleted or an edge renamed by a broken tool) is not a model ONNX Runtime
    can run; onnx-ir reads it with a warning and leaves a dangling value that copying the model
    later trips over. Empty names are omitted optional inputs and are fine.
    """
    defined = {value.name for value in graph.inputs} | set(graph.initializers)
    for node in graph:
        for value in node.inputs:
            if value is not None and value.name and value.producer() is None and value.name not in defined:
                raise ModelLoadError(f"invalid ONNX graph: node {node.name or node.op_type!r} reads "
                                     f"{value.name!r}, which no node, graph input or initializer defines: {path}")
        defined.update(value.name for value in node.outputs if value.name)


def _materialize_external_tensors(model: ir.Model) -> None:
    """Read externally stored weights into memory.

    A model that fits in one protobuf is then self-contained: it serializes to bytes for ONNX
    Runtime, onnx.checker and the ONNX Runtime quantizers without references to a data file
    beside the ORIGINAL model (which they would resolve against the wrong folder, or not at all).
    Models over the limit keep their memory-mapped lazy tensors and are written to disk with
    external data whenever a tool needs a file.
    """
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                try:
                    array = np.array(tensor.numpy(), copy=True)
                except Exception as exc:
                    raise ModelLoadError(f"could not read external data of {value.name!r}: {exc}") from exc
                value.const_value = ir.Tensor(array, dtype=tensor.dtype, name=tensor.name, doc_string=tensor.doc_string)


def weights_nbytes(model: ir.Model) -> int:
    """Bytes of all initializer data (what decides inline vs external-data storage)."""
    total = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def check_output_path(output: PathLike, protected: Iterable[PathLike] = ()) -> Path:
    """Validate an output path: its folder must exist and it must not be a protected file.

    ``protected`` are the input model and its data files: writing the result over its own
    input would destroy the input, so it is refused.
    """
    out = Path(output)
    if out.exists() and out.is_dir():
        raise OutputPathError(f"output path is a directory: {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise OutputPathError(f"output folder does not exist: {parent}")
    resolved = out.resolve()
    data_file = resolved.with_name(resolved.name + ".data")
    for item in protected:
        item_resolved = Path(item).resolve()
        if item_resolved in (resolved, data_file):
            raise OutputPathError(
                f"refusing to write {out}: it would overwrite the input {item}; choose another output path"
            )
    return out


@contextlib.contextmanager
def staged_output(path: PathLike, protected: Iterable[PathLike] = ()) -> Iterator[Path]:
    """Stage a model write: yield a path in a temporary folder beside ``path``; on success move
    the model (and its ``NAME.data`` external data file, if written) into place.

    Whatever the body writes is discarded if it raises, so a failed export or pass never leaves
    a half-written output. The data file is moved first, then the model file, so a reader never
    sees a new model pointing at missing data.
    """
    out = check_output_path(path, protected)
    data_name = out.name + ".data"
    with tempfile.TemporaryDirectory(prefix=".onnx-compress-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        yield staged
        if not staged.exists():
            raise OutputPathError(f"nothing was written for {out}")
        staged_data = Path(tmp) / data_name
        final_data = out.parent / data_name
        if staged_data.exists():
            os.replace(staged_data, final_data)
        elif final_data.exists():
            # a stale data file from an earlier save would confuse readers of the folder
            final_data.unlink()
        os.replace(staged, out)


def save_model(
    model: ir.Model,
    path: PathLike,
    *,
    protected: Iterable[PathLike] = (),
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically; return the path.

    Args:
        model: the model to write; it is not modified.
        path: the output ``.onnx`` file. Its folder must exist.
        protected: files that must not be overwritten (the input model and its data files).
        external_data: force (True) or forbid (False) external data; ``None`` chooses external
            data when the weights exceed :data:`EXTERNAL_DATA_THRESHOLD_BYTES` or some weights
            are still lazy external tensors.
    """
    # a model that still holds lazy external tensors (what is left of a large model) is written
    # with external data too: ir.save copies them into the new data file
    use_external = external_data if external_data is not None else needs_file(model)
    with staged_output(path, protected) as staged:
        try:
            if use_external:
                ir.save(
                    model,
                    staged,
                    external_data=staged.name + ".data",
                    size_threshold_bytes=_EXTERNAL_TENSOR_MIN_BYTES,
                )
            else:
                ir.save(model, staged)
        except Exception as exc:
            raise OutputPathError(f"could not write {path} ({type(exc).__name__}: {exc})") from exc
    logger.info("wrote %s%s", path, " (+ external data)" if use_external else "")
    return Path(path)


def needs_file(model: ir.Model) -> bool:
    """Whether tools must be given the model as a file rather than as serialized bytes.

    True above the protobuf limit, and whenever some weights are still lazy external tensors
    (a large model, or what remains of one after a pass shrank it): their locations are relative
    to the original model's folder and only mean something to a model written to disk.
    """
    if weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES:
        return True
    return any(
        isinstance(value.const_value, ir.ExternalTensor)
        for graph in model.graphs()
        for value in graph.initializers.values()
    )


def model_bytes(model: ir.Model) -> bytes:
    """Serialize a self-contained model (see :func:`needs_file`) to bytes for ONNX Runtime."""
    if needs_file(model):
        raise ValueError("model_bytes() on a model that needs a file; use materialized_path()")
    proto = ir.serde.serialize_model(model)
    return proto.SerializeToString()


def check_model(model: ir.Model, *, full_check: bool = False) -> None:
    """``onnx.checker.check_model`` on an in-memory model of any size (raises its errors)."""
    if needs_file(model):
        with materialized_path(model) as path:
            onnx.checker.check_model(str(path), full_check=full_check)
    else:
        onnx.checker.check_model(ir.serde.serialize_model(model), full_check=full_check)


@contextlib.contextmanager
def materialized_path(model: ir.Model | PathLike) -> Iterator[Path]:
    """A path of the model on disk: the file itself, or a temporary copy of an in-memory model.

    Models over the protobuf limit are written with external data in the temporary folder.
    """
    if not isinstance(model, ir.Model):
        yield Path(model)
        return
    tmp = tempfile.mkdtemp(prefix="onnx-compress-model-")
    try:
        path = Path(tmp) / "model.onnx"
        save_model(model, path)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
