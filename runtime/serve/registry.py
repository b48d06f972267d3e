"""The models a server holds: ONNX Runtime sessions found in one file or a Triton-style repository.

Sources:

- one ``.onnx`` file: served as NAME = the file's stem (or the name given), version 1, no batch
  limit; its Triton config (what ``deploy_triton`` would write) is built to check it.
- a model repository (the layout :func:`~onnx_compress.runtime.deploy.deploy_triton` writes and
  Triton reads): every sub-folder ``NAME/`` with a ``config.pbtxt`` (or, without one, numeric
  version folders holding ``model.onnx``). From the config the server takes ``name`` (must
  equal the folder name, as in Triton), ``platform``/``backend`` (must be ONNX Runtime),
  ``max_batch_size`` (the largest first-axis size accepted), ``default_model_filename`` and
  ``version_policy`` (``latest`` N, ``all``, ``specific``; default: the latest version). The
  inputs and outputs the config lists must exist in the model with the same data types.

Shapes and data types served are the ONNX model's own (read from the ONNX Runtime session);
every model file's external data is checked to stay inside its folder before it is loaded.
Any problem with the repository stops the server at start-up with a message naming the file:
a server never starts with half of what it was asked to serve.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from onnx_compress.errors import DeployError, ModelLoadError, RuntimeSessionError, one_line
from onnx_compress.model_io import PathLike, load_model, model_files
from onnx_compress.runtime.deploy.model_config import (
    build_model_config,
    is_onnxruntime_config,
    model_config_module,
    read_model_config,
)
from onnx_compress.runtime.deploy.triton import MODEL_FILENAME, check_model_name
from onnx_compress.runtime.session import Runner, SessionSettings
from onnx_compress.runtime.tensor_types import TensorType, by_datatype

__all__ = ["TensorSpec", "ServedModel", "ModelRegistry", "load_models"]

logger = logging.getLogger(__name__)

# ONNX Runtime's type names ("tensor(float)") -> protocol datatypes
_ORT_TYPES = {
    "float": "FP32", "double": "FP64", "float16": "FP16", "bfloat16": "BF16", "bool": "BOOL",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "string": "BYTES",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A served input or output: name, element type and shape (int = static, str/None = any size)."""

    name: str
    type: TensorType
    shape: tuple[int | str | None, ...]

    @property
    def datatype(self) -> str:
        return self.type.datatype

    @property
    def dtype(self) -> np.dtype:
        assert self.type.numpy is not None  # refused at load
        return self.type.numpy

    def protocol_shape(self) -> list[int]:
        """The shape as the protocol reports it: -1 for a dynamic axis."""
        return [d if isinstance(d, int) else -1 for d in self.shape]

    def describe(self) -> str:
        return f"{self.name}: {self.datatype}{self.protocol_shape()}"


def _specs(args: Sequence[Any], what: str, source: Path) -> list[TensorSpec]:
    specs = []
    for arg in args:
        if not arg.type.startswith("tensor("):
            raise ModelLoadError(f"{source}: {what} {arg.name!r} is a {arg.type}; only tensors can be served")
        datatype = _ORT_TYPES.get(arg.type.removeprefix("tensor(").removesuffix(")"))
        tensor_type = by_datatype(datatype) if datatype else None
        if tensor_type is None or tensor_type.numpy is None or tensor_type.datatype == "BYTES":
            raise ModelLoadError(
                f"{source}: {what} {arg.name!r} has type {arg.type}, which this server does not serve "
                "(string and bfloat16 tensors are not supported)"
            )
        shape = tuple(arg.shape) if arg.shape is not None else None
        if shape is None:
            raise ModelLoadError(f"{source}: {what} {arg.name!r} has no known rank")
        specs.append(TensorSpec(arg.name, tensor_type, shape))
    return specs


class ServedModel:
    """One version of one model: an ONNX Runtime session, its tensor specs and its limits.

    ``session.run`` is safe to call from several threads at once (ONNX Runtime guarantees it),
    which is how the server runs concurrent requests.
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        settings: SessionSettings,
        *,
        config: Any | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        model_files(path)  # external data must stay inside the model's folder
        runner = Runner(path, settings)
        self.session: ort.InferenceSession = runner.session
        self.providers: list[str] = runner.providers
        self.inputs = _specs(self.session.get_inputs(), "input", path)
        self.outputs = _specs(self.session.get_outputs(), "output", path)
        self.max_batch: int = 0
        self.config = config
        if config is not None:
            self._apply_config(config)
        self._input_by_name = {spec.name: spec for spec in self.inputs}
        self._output_names = {spec.name for spec in self.outputs}

    def _apply_config(self, config: Any) -> None:
        pb = model_config_module()
        if config.max_batch_size < 0:
            raise ModelLoadError(f"{self.path}: config max_batch_size is negative ({config.max_batch_size})")
        self.max_batch = int(config.max_batch_size)
        if self.max_batch > 0:
            static = [spec.describe() for spec in self.inputs + self.outputs
                      if not spec.shape or isinstance(spec.shape[0], int)]
            if static:
                raise ModelLoadError(
                    f"{self.path}: max_batch_size {self.max_batch} needs a dynamic first axis, "
                    f"but these tensors have none: {', '.join(static)}"
                )
        served = {spec.name: spec for spec in self.inputs + self.outputs}
        for entry in list(config.input) + list(config.output):
            spec = served.get(entry.name)
            if spec is None:
                raise ModelLoadError(
                    f"{self.path}: the config lists tensor {entry.name!r}, which the model does not have "
                    f"(it has {', '.join(sorted(served))})"
                )
            configured = pb.DataType.Name(entry.data_type)
            if configured != spec.type.triton:
                raise ModelLoadError(
                    f"{self.path}: the config gives {entry.name!r} type {configured}, the model has {spec.type.triton}"
                )

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def input_spec(self, name: str) -> TensorSpec | None:
        return self._input_by_name.get(name)

    def has_output(self, name: str) -> bool:
        return name in self._output_names

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        """Run the session (blocking; the server calls this from its thread pool)."""
        return self.session.run(list(output_names), dict(feeds))

    def tensor_metadata(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Inputs and outputs as the v2 model metadata lists them (name, datatype, shape with -1)."""
        def listed(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": s.protocol_shape()} for s in specs]

        return listed(self.inputs), listed(self.outputs)


class ModelRegistry:
    """Served models by name and version; the default version of a name is its highest."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise ModelLoadError("no models to serve")
        self._models: dict[str, dict[int, ServedModel]] = {}
        for model in models:
            versions = self._models.setdefault(model.name, {})
            if model.version in versions:
                raise ModelLoadError(f"model {model.name!r} version {model.version} is given twice")
            versions[model.version] = model

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def __iter__(self):
        for name in self.names:
            yield from (self._models[name][v] for v in self.versions(name))

    def find(self, name: str, version: str | None = None) -> ServedModel | None:
        """The model, or None when the name or version is not served."""
        versions = self._models.get(name)
        if not versions:
            return None
        if version is None or version == "":
            return versions[max(versions)]
        if not version.isdigit():
            return None
        return versions.get(int(version))


def _load_file(path: Path, name: str | None, settings: SessionSettings) -> ServedModel:
    name = check_model_name(name if name is not None else path.stem)
    config = None
    try:
        config = build_model_config(load_model(path), name)
    except DeployError as exc:  # the model serves fine; it just has no Triton description
        logger.warning("no Triton config for %s (%s); served without a batch limit", path, one_line(exc))
    return ServedModel(name, 1, path, settings, config=config)


def _chosen_versions(config: Any | None, available: list[int], folder: Path) -> list[int]:
    """Apply Triton's version_policy (default: latest 1) to the versions on disk."""
    policy = config.version_policy.WhichOneof("policy_choice") if config is not None else None
    if policy == "all":
        return available
    if policy == "specific":
        wanted = sorted(set(config.version_policy.specific.versions))
        missing = [v for v in wanted if v not in available]
        if missing:
            raise ModelLoadError(f"{folder}: version_policy names version(s) {missing}, not found on disk")
        return wanted
    count = config.version_policy.latest.num_versions if policy == "latest" else 1
    return available[-max(count, 1):]


def _load_repository_model(folder: Path, settings: SessionSettings) -> list[ServedModel] | None:
    config_path = folder / "config.pbtxt"
    config = read_model_config(config_path) if config_path.is_file() else None
    name = folder.name
    filename = MODEL_FILENAME
    if config is not None:
        if config.name and config.name != folder.name:
            raise ModelLoadError(f"{config_path}: name {config.name!r} differs from its folder {folder.name!r}")
        if not is_onnxruntime_config(config):
            kind = config.platform or config.backend
            raise ModelLoadError(
                f"{config_path}: model {name!r} is for {kind!r}; this server runs only ONNX models "
                "(platform onnxruntime_onnx / backend onnxruntime)"
            )
        filename = config.default_model_filename or MODEL_FILENAME
        if Path(filename).name != filename:
            raise ModelLoadError(f"{config_path}: default_model_filename {filename!r} must be a plain file name")
    available = sorted(int(p.name) for p in folder.iterdir()
                       if p.is_dir() and p.name.isdigit() and (p / filename).is_file())
    if not available:
        if config is None:
            return None  # not a model folder
        raise ModelLoadError(f"{folder}: no version folder (1/, 2/, ...) holds {filename}")
    check_model_name(name)
    if config is None:
        # no config: describe the model like deploy_triton would, without batching
        config = build_model_config(load_model(folder / str(available[-1]) / filename), name)
    return [ServedModel(name, version, folder / str(version) / filename, settings, config=config)
            for version in _chosen_versions(config, available, folder)]


def load_models(source: PathLike, settings: SessionSettings | None = None, *, name: str | None = None) -> ModelRegistry:
    """Load every model of ``source`` (an ``.onnx`` file or a model repository folder).

    Raises:
        ModelLoadError: the source, a config or a model cannot be read or served.
        SettingError: a model name is not a plain folder name.
        RuntimeSessionError: ONNX Runtime cannot load a model.
    """
    settings = settings or SessionSettings()
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"nothing to serve at {path}: give an .onnx file or a model repository folder")
    try:
        if path.is_file():
            return ModelRegistry([_load_file(path, name, settings)])
        if name is not None:
            raise ModelLoadError("a name can only be given when serving one .onnx file, not a repository")
        models: list[ServedModel] = []
        for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found = _load_repository_model(folder, settings)
            if found is None:
                logger.warning("skipping %s: no config.pbtxt and no version folder with %s", folder, MODEL_FILENAME)
                continue
            models.extend(found)
    except RuntimeSessionError as exc:
        raise RuntimeSessionError(f"{path}: {exc}") from exc
    if not models:
        raise ModelLoadError(f"{path}: no models found (expected NAME/config.pbtxt and NAME/1/{MODEL_FILENAME})")
    return ModelRegistry(models)
