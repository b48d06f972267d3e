"""Triton's model configuration (``config.pbtxt``): build one from an ONNX model, read one back.

The schema is Triton's own ``ModelConfig`` protobuf message, which ships in the
``tritonclient`` package (``tritonclient/grpc/model_config_pb2.py``). Configs are built as that
message and written with ``google.protobuf.text_format``, so a written ``config.pbtxt`` parses
as Triton's ``ModelConfig`` by construction, and reading uses the same parser Triton's schema
defines (a typo in a hand-edited config is reported with its line and column).

Rules of Triton's onnxruntime backend that the builder follows:

- ``platform: "onnxruntime_onnx"``; inputs and outputs carry the model's names, data types
  (``TYPE_FP32``, ``TYPE_INT64``, ...; see :mod:`onnx_compress.runtime.tensor_types`) and dims.
- ``max_batch_size > 0`` means Triton owns the first axis: it is left out of ``dims`` and must be
  dynamic in the model (a static batch axis is refused). A tensor whose only axis is the batch
  axis gets ``dims: [1]`` with an empty ``reshape``, as Triton requires.
- Every other symbolic dimension is ``-1``. A tensor of unknown rank is refused: Triton needs
  the rank.
- ``instance_group`` with ``KIND_GPU`` or ``KIND_CPU`` and a count; ``dynamic_batching { }``
  only with ``max_batch_size > 0`` (Triton rejects it otherwise).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx_ir as ir

from onnx_compress.data import input_specs
from onnx_compress.errors import DeployError, MissingDependencyError, ModelLoadError, SettingError
from onnx_compress.runtime.tensor_types import TensorType, by_onnx

__all__ = [
    "PLATFORM",
    "TensorDesc",
    "model_config_module",
    "describe_tensors",
    "build_model_config",
    "config_text",
    "parse_model_config",
    "read_model_config",
    "is_onnxruntime_config",
]

logger = logging.getLogger(__name__)

#: Triton's platform name for ONNX models run by its onnxruntime backend
PLATFORM = "onnxruntime_onnx"
_BACKEND = "onnxruntime"

_module: ModuleType | None = None


def model_config_module() -> ModuleType:
    """Triton's ``model_config_pb2`` module from the installed ``tritonclient`` package.

    The generated module is loaded from its file, without ``tritonclient.grpc``'s ``__init__``:
    that one registers Triton's gRPC service messages (``inference.ServerLiveRequest``, ...) in
    protobuf's default pool, which the KServe server registers too (kserve/kserve#3099), and it
    needs ``grpcio``. ``model_config.proto`` alone needs only protobuf and clashes with nothing.
    """
    global _module
    if _module is not None:
        return _module
    loaded = sys.modules.get("tritonclient.grpc.model_config_pb2")
    if loaded is not None:  # this process already imported tritonclient.grpc: reuse its messages
        _module = loaded
        return loaded
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("tritonclient", "serve", "Triton's model configuration schema")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise MissingDependencyError("tritonclient", "serve", "Triton's model configuration schema")
    file_spec = importlib.util.spec_from_file_location("onnx_compress_triton_model_config_pb2", path)
    if file_spec is None or file_spec.loader is None:  # pragma: no cover - a broken install
        raise MissingDependencyError("tritonclient", "serve", "Triton's model configuration schema")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    _module = module
    return module


@dataclasses.dataclass(frozen=True)
class TensorDesc:
    """A model input or output: name, element type, and shape (``None`` = unknown rank).

    A dimension is an ``int`` when static, a ``str`` (its symbolic name) or ``None`` when dynamic.
    """

    name: str
    type: TensorType
    shape: tuple[int | str | None, ...] | None


def _dims(shape: ir.Shape | None) -> tuple[int | str | None, ...] | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) else None)
                 for d in shape)


def describe_tensors(model: ir.Model) -> tuple[list[TensorDesc], list[TensorDesc]]:
    """The model's real inputs (initializers skipped) and its outputs, with Triton types.

    Raises:
        DeployError: a tensor has an element type Triton cannot name.
    """
    real_inputs = {spec.name for spec in input_specs(model)}
    found: list[list[TensorDesc]] = [[], []]
    for kind, values in enumerate((model.graph.inputs, model.graph.outputs)):
        for value in values:
            if kind == 0 and value.name not in real_inputs:
                continue
            tensor_type = by_onnx(value.dtype) if value.dtype is not None else None
            if tensor_type is None:
                what = "input" if kind == 0 else "output"
                raise DeployError(
                    f"{what} {value.name!r} has element type {value.dtype}, which Triton's "
                    "onnxruntime backend cannot serve"
                )
            found[kind].append(TensorDesc(str(value.name), tensor_type, _dims(value.shape)))
    return found[0], found[1]


def _config_dims(tensor: TensorDesc, what: str, max_batch: int) -> tuple[list[int], bool]:
    """(dims for the config, whether an empty reshape is needed) for one tensor."""
    if tensor.shape is None:
        raise DeployError(
            f"{what} {tensor.name!r} has no shape in the model; Triton needs every tensor's rank "
            "(run shape inference on the model, e.g. onnx.shape_inference, and deploy again)"
        )
    dims = [d if isinstance(d, int) else -1 for d in tensor.shape]
    if max_batch == 0:
        return dims, False
    if not dims:
        raise DeployError(
            f"{what} {tensor.name!r} is a scalar, so it has no batch axis; deploy with max_batch=0"
        )
    if isinstance(tensor.shape[0], int):
        shape = "x".join(str(d) if isinstance(d, int) else str(d or "?") for d in tensor.shape)
        raise DeployError(
            f"{what} {tensor.name!r} has a static batch axis of size {tensor.shape[0]} (shape {shape}); "
            f"max_batch_size {max_batch} needs a dynamic first axis in the model: re-export it with "
            "a dynamic batch axis, or deploy with max_batch=0 (Triton then passes shapes as they are)"
        )
    rest = dims[1:]
    if not rest:
        return [1], True  # Triton's rule for a [batch] tensor: dims [1] reshaped to []
    return rest, False


def build_model_config(
    model: ir.Model,
    name: str,
    *,
    max_batch: int = 0,
    instances: int = 1,
    gpu: bool = False,
    dynamic_batching: bool = False,
) -> Any:
    """Triton's ``ModelConfig`` message for ``model`` (see the module docstring for the rules).

    Raises:
        SettingError: a setting is out of range (negative batch, zero instances, dynamic batching
            without batching).
        DeployError: the model cannot be described to Triton (static batch axis with
            ``max_batch > 0``, a tensor of unknown rank or an unsupported element type).
    """
    if max_batch < 0:
        raise SettingError(f"max_batch must be >= 0 (0 = no batching by Triton), got {max_batch}")
    if instances < 1:
        raise SettingError(f"instances must be >= 1, got {instances}")
    if dynamic_batching and max_batch == 0:
        raise SettingError(
            "dynamic_batching needs max_batch > 0: Triton batches requests along the first axis "
            "only for models deployed with a max batch size"
        )
    pb = model_config_module()
    config = pb.ModelConfig()
    config.name = name
    config.platform = PLATFORM
    config.max_batch_size = max_batch
    inputs, outputs = describe_tensors(model)
    for what, tensors, field in (("input", inputs, config.input), ("output", outputs, config.output)):
        for tensor in tensors:
            dims, reshape = _config_dims(tensor, what, max_batch)
            entry = field.add()
            entry.name = tensor.name
            entry.data_type = pb.DataType.Value(tensor.type.triton)
            entry.dims.extend(dims)
            if reshape:
                entry.reshape.SetInParent()
    group = config.instance_group.add()
    group.count = instances
    group.kind = pb.ModelInstanceGroup.Kind.Value("KIND_GPU" if gpu else "KIND_CPU")
    if dynamic_batching:
        config.dynamic_batching.SetInParent()
    return config


def config_text(config: Any) -> str:
    """The ``config.pbtxt`` text of a ``ModelConfig`` message."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_model_config(text: str, *, source: str = "config.pbtxt") -> Any:
    """Parse ``config.pbtxt`` text as Triton's ``ModelConfig`` (ModelLoadError if it does not)."""
    from google.protobuf import text_format

    pb = model_config_module()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{source} is not a valid Triton model configuration: {exc}") from exc


def read_model_config(path: Path) -> Any:
    """Read and parse a ``config.pbtxt`` file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    return parse_model_config(text, source=str(path))


def is_onnxruntime_config(config: Any) -> bool:
    """Whether a config selects Triton's onnxruntime backend (by platform or by backend)."""
    return config.platform == PLATFORM or config.backend == _BACKEND or (
        not config.platform and not config.backend
    )
