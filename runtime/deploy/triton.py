"""Deploy an ONNX model into a Triton Inference Server model repository.

:func:`deploy_triton` writes the layout Triton's onnxruntime backend loads::

    REPO/NAME/config.pbtxt           Triton's ModelConfig in protobuf text format
    REPO/NAME/VERSION/model.onnx     the model
    REPO/NAME/VERSION/model.onnx.data   its weights, only when the model uses external data

The config is built by :mod:`onnx_compress.runtime.deploy.model_config` (names, data types and
dims from the model; batching, instance groups). Before anything is written the model is
loaded in ONNX Runtime on the CPU (the engine Triton will run), so a model ONNX Runtime cannot
load is never deployed.

Safety:

- NAME must be one plain folder name (letters, digits, ``_ . -``); VERSION an integer >= 1.
- The model is re-saved with :func:`onnx_compress.model_io.save_model` (atomic; external-data
  locations are relative to ``model.onnx`` and never leave its folder). A source model that keeps
  its weights in external data is written with external data too (``model.onnx.data``).
- An existing ``VERSION/model.onnx`` is not replaced unless ``overwrite=True`` (Triton may be
  watching the repository). ``config.pbtxt`` is per model, shared by all its versions: it is
  rewritten atomically, with a warning when it changes while other versions exist.

Limits: one ONNX model per Triton model (no ensembles); ``version_policy`` is left at Triton's
default (serve the latest version).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnx_compress.atomic import write_atomic
from onnx_compress.errors import OutputPathError, SettingError
from onnx_compress.model_io import PathLike, load_model, model_files, save_model
from onnx_compress.runtime.deploy.model_config import build_model_config, config_text
from onnx_compress.runtime.session import Runner, SessionSettings
from onnx_compress.setting import check_fields, overridden, setting

__all__ = ["MODEL_FILENAME", "TritonSettings", "TritonDeployment", "deploy_triton", "check_model_name"]

logger = logging.getLogger(__name__)

#: the file name Triton's onnxruntime backend loads from a version folder
MODEL_FILENAME = "model.onnx"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class TritonSettings:
    """How a model is deployed (each field's help text is its declaration below; ``max_batch`` and
    ``instances`` are checked against the model by ``model_config.build_model_config``)."""

    version: int = setting(1, range=">= 1", metavar="N", help="the version folder")
    max_batch: int = setting(0, metavar="N", help="""
        Triton's max_batch_size; > 0 needs a dynamic batch axis (default 0: no Triton batching)""")
    instances: int = setting(1, metavar="N", help="model instances Triton runs in parallel")
    gpu: bool = setting(False, help="run the instances on GPUs (KIND_GPU; default KIND_CPU)")
    dynamic_batching: bool = setting(False, help="""
        let Triton merge concurrent requests into batches (needs --max-batch > 0)""")
    overwrite: bool = setting(False, help="replace an existing NAME/VERSION/model.onnx (never while a server uses it)")

    def __post_init__(self) -> None:
        check_fields(self)


def check_model_name(name: str) -> str:
    """A Triton model name must be one plain folder name; return it or raise SettingError."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", "..") or len(name) > 128:
        raise SettingError(
            f"model name {name!r} is not a plain folder name: use letters, digits, '_', '.' and '-' "
            "(it names REPO/NAME and the URL /v2/models/NAME)"
        )
    return name


@dataclasses.dataclass(frozen=True)
class TritonDeployment:
    """What :func:`deploy_triton` wrote."""

    repository: Path
    name: str
    version: int
    config_path: Path
    model_path: Path
    data_path: Path | None  # the external data file, when the model has one
    max_batch: int
    instances: int
    gpu: bool
    dynamic_batching: bool
    config: str  # the config.pbtxt text

    def as_dict(self) -> dict[str, object]:
        return {key: (str(value) if isinstance(value, Path) else value)
                for key, value in dataclasses.asdict(self).items()}

    def summary(self) -> str:
        batching = f"max_batch_size {self.max_batch}" if self.max_batch else "no Triton batching"
        if self.dynamic_batching:
            batching += ", dynamic batching"
        kind = "GPU" if self.gpu else "CPU"
        data = f" + {self.data_path.name}" if self.data_path else ""
        return (f"deployed {self.name} version {self.version} to {self.repository} "
                f"({self.model_path.name}{data}; {batching}; {self.instances} {kind} instance(s))")


def _model_folder(repo: Path, name: str, version: int, overwrite: bool) -> Path:
    if repo.exists() and not repo.is_dir():
        raise OutputPathError(f"model repository {repo} exists and is not a folder")
    folder = repo / name / str(version)
    target = folder / MODEL_FILENAME
    if target.exists() and not overwrite:
        raise OutputPathError(
            f"{target} already exists; choose another version, or overwrite it explicitly "
            "(overwrite=True, --overwrite) if no Triton server is serving it"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create {folder}: {exc}") from exc
    return folder


def deploy_triton(model: ir.Model | PathLike, repo: PathLike, name: str | None = None,
                  settings: TritonSettings | None = None, **overrides: Any) -> TritonDeployment:
    """Write ``model`` into the Triton model repository ``repo`` as ``name``/``version``.

    Args:
        model: an ONNX file or an ``onnx_ir.Model``; it is never modified.
        repo: the model repository folder (created if missing).
        name: the Triton model name (a plain folder name); defaults to the file's stem.
        settings: a :class:`TritonSettings` (defaults when None); ``**overrides`` sets single ones
            on top of it (``version=2, max_batch=8``). Its fields:
        version: the version folder, an integer >= 1.
        max_batch: Triton's ``max_batch_size``. 0 (default): Triton does not batch and the dims
            are the model's full shapes. > 0: the first axis is Triton's batch axis; it must be
            dynamic in the model and is left out of ``dims``.
        instances: model instances Triton runs in parallel (``instance_group.count``).
        gpu: ``KIND_GPU`` instances instead of ``KIND_CPU``.
        dynamic_batching: let Triton merge concurrent requests into batches (needs max_batch > 0).
        overwrite: replace an existing ``name/version/model.onnx``.

    Raises:
        SettingError: a bad name, version, batch size or instance count.
        DeployError: the model cannot be described to Triton (see ``model_config``).
        RuntimeSessionError: ONNX Runtime cannot load the model.
        OutputPathError: the version exists (without ``overwrite``) or cannot be written.
    """
    settings = overridden(settings or TritonSettings(), overrides, where="deploy_triton()")
    version, max_batch, instances = settings.version, settings.max_batch, settings.instances
    gpu, dynamic_batching, overwrite = settings.gpu, settings.dynamic_batching, settings.overwrite
    if name is None:
        if isinstance(model, ir.Model):
            raise SettingError("name is required when deploying an in-memory model")
        name = Path(model).stem
    check_model_name(name)
    if isinstance(model, ir.Model):
        loaded, protected, external = model, [], None
    else:
        protected = model_files(model)  # refuses external data outside the model's folder
        loaded = load_model(model)
        external = True if len(protected) > 1 else None
    config = build_model_config(loaded, name, max_batch=max_batch, instances=instances,
                                gpu=gpu, dynamic_batching=dynamic_batching)
    text = config_text(config)
    # the engine Triton runs must load it: check before writing anything
    Runner(loaded if isinstance(model, ir.Model) else model, SessionSettings(provider="cpu"))

    repository = Path(repo)
    folder = _model_folder(repository, name, version, overwrite)
    model_path = save_model(loaded, folder / MODEL_FILENAME, protected=protected, external_data=external)
    data_path = model_path.with_name(model_path.name + ".data")

    config_path = repository / name / "config.pbtxt"
    if config_path.exists():
        old = config_path.read_text(encoding="utf-8", errors="replace")
        others = [p.name for p in config_path.parent.iterdir()
                  if p.is_dir() and p.name.isdigit() and p.name != str(version)]
        if old != text and others:
            logger.warning("%s changed; it also applies to version(s) %s of %s",
                           config_path, ", ".join(sorted(others, key=int)), name)
    write_atomic(config_path, text)  # 0644: the server may run as another user
    deployment = TritonDeployment(
        repository=repository,
        name=name,
        version=version,
        config_path=config_path,
        model_path=model_path,
        data_path=data_path if data_path.exists() else None,
        max_batch=max_batch,
        instances=instances,
        gpu=gpu,
        dynamic_batching=dynamic_batching,
        config=text,
    )
    logger.info("%s", deployment.summary())
    return deployment
