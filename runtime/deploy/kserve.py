"""Kubernetes manifests for KServe: serve a Triton repository on a cluster, two ways.

:func:`deploy_kserve` writes, into one folder::

    NAME-triton.yaml        InferenceService: KServe's Triton runtime (kserve-tritonserver,
                            modelFormat onnx, protocol v2) serving the Triton repository at
                            the storage URI, the config.pbtxt files as deploy wrote them
                            (dynamic batching, instance groups: Triton's)
    NAME-onnxruntime.yaml   InferenceService: a custom predictor container running
                            ``onnx-compress serve /mnt/models`` (KServe's Python model server with
                            ONNX Runtime, this package), with KServe's request batcher when asked
    Dockerfile              the image of that container (needs the onnx-compress wheel beside it)

Both take: replicas (``minReplicas``/``maxReplicas``), the autoscaling target (``scaleMetric:
concurrency``, ``scaleTarget``: in-flight requests per replica, Knative's autoscaler),
resources (requests = limits: ``cpu``, ``memory``, optional ``nvidia.com/gpu``) and the storage
URI (``s3://``, ``gs://``, ``pvc://``, ``https://``, ...) of the uploaded repository; KServe's
storage initializer downloads it to ``/mnt/models`` before the server starts (for the custom
container through its ``STORAGE_URI`` variable).

Checks before anything is written (one-line :class:`SettingError`): the name is a DNS-1035
label short enough for its suffixes, quantities are Kubernetes quantities (``500m``, ``2``,
``1.5Gi``), replica counts and targets are in range, the storage URI has a scheme.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from onnx_compress import __version__
from onnx_compress.errors import OutputPathError, SettingError
from onnx_compress.model_io import PathLike
from onnx_compress.setting import check_fields, setting

__all__ = ["KServeSettings", "kserve_settings", "KServeDeployment", "kserve_manifests", "dockerfile", "deploy_kserve"]

API_VERSION = "serving.kserve.io/v1beta1"
TRITON_RUNTIME = "kserve-tritonserver"
_SUFFIXES = ("-triton", "-onnxruntime")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 63 - max(len(s) for s in _SUFFIXES)
# Kubernetes quantities as people write them: a decimal number with an optional SI or binary suffix
_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
WHEEL = f"onnx_compress-{__version__}-py3-none-any.whl"


@dataclasses.dataclass(frozen=True)
class KServeSettings:
    """What the manifests ask of the cluster (each field's help text is its declaration below)."""

    name: str = setting(dataclasses.MISSING, kind="str", cli=False, help="""
        base name of the InferenceServices (a DNS-1035 label: lowercase letters, digits, '-')""")
    storage_uri: str = setting(dataclasses.MISSING, kind="str", metavar="URI", help="""
        where the Triton repository is uploaded for the cluster (s3://, gs://, pvc://, https://...)""")
    image: str = setting(f"onnx-compress-serve:{__version__}", help="""
        the container image of the onnx-compress predictor (built from the generated Dockerfile)""")
    min_replicas: int = setting(1, range=">= 0", help="minReplicas (0: scale to zero)")
    max_replicas: int = setting(1, range=">= 1", help="maxReplicas")
    target_concurrency: int | None = setting(None, kind="int", range=">= 1", help="""
        autoscale on in-flight requests per replica (scaleMetric concurrency, scaleTarget N; default:
        KServe's)""")
    cpu: str = setting("1", help="CPU per replica, requests = limits, a Kubernetes quantity (e.g. 500m)")
    memory: str = setting("2Gi", help="memory per replica, requests = limits, a Kubernetes quantity")
    gpus: int = setting(0, range=">= 0", help="nvidia.com/gpu per replica")
    batch_size: int | None = setting(None, kind="int", range=">= 1", help="""
        KServe batcher for the onnx-compress predictor: maxBatchSize (with --batch-latency-ms)""")
    batch_latency_ms: int | None = setting(None, kind="int", range=">= 1", metavar="MS",
                                           help="KServe batcher: maxLatency in ms")

    def __post_init__(self) -> None:
        check_fields(self)
        if not _DNS_1035.match(self.name) or len(self.name) > _MAX_NAME:
            raise SettingError(
                f"InferenceService name {self.name!r} is not a DNS-1035 label of at most {_MAX_NAME} characters "
                "(lowercase letters, digits and '-', starting with a letter, not ending with '-')"
            )
        if not _URI.match(self.storage_uri):
            raise SettingError(f"storage URI {self.storage_uri!r} needs a scheme, e.g. s3://bucket/models or "
                               "pvc://claim/models (KServe downloads it to /mnt/models)")
        for what, value in (("cpu", self.cpu), ("memory", self.memory)):
            if not _QUANTITY.match(value) or float(re.sub(r"[A-Za-z]+$", "", value)) <= 0:
                raise SettingError(f"{what} {value!r} is not a positive Kubernetes quantity (e.g. 500m, 2, 1.5Gi)")
        if not self.image or any(c.isspace() for c in self.image):
            raise SettingError(f"image {self.image!r} is not a container image reference")
        if self.max_replicas < self.min_replicas:
            raise SettingError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        if (self.batch_size is None) != (self.batch_latency_ms is None):
            raise SettingError("the batcher needs both batch_size and batch_latency_ms (or neither)")

    @property
    def triton_name(self) -> str:
        return self.name + _SUFFIXES[0]

    @property
    def python_name(self) -> str:
        return self.name + _SUFFIXES[1]


def kserve_settings(model: PathLike, name: str | None = None, storage_uri: str | None = None,
                    **values: Any) -> KServeSettings:
    """The settings of the manifests for ``model`` deployed as the Triton model ``name`` (default: the
    file's stem): the InferenceServices are named after it as a DNS-1035 label (lowercased, ``_`` and
    ``.`` as ``-``); ``storage_uri`` is required; ``values``: the other :class:`KServeSettings`."""
    if storage_uri is None:
        raise SettingError("KServe manifests need storage_uri (CLI: --storage-uri): where the repository will be "
                           "uploaded (s3://..., pvc://...)")
    service = (name or Path(model).stem).lower().replace("_", "-").replace(".", "-")
    return KServeSettings(name=service, storage_uri=storage_uri, **values)


def _resources(settings: KServeSettings) -> dict[str, dict[str, str]]:
    amount = {"cpu": settings.cpu, "memory": settings.memory}
    if settings.gpus:
        amount["nvidia.com/gpu"] = str(settings.gpus)
    return {"requests": dict(amount), "limits": dict(amount)}


def _predictor(settings: KServeSettings) -> dict[str, Any]:
    predictor: dict[str, Any] = {"minReplicas": settings.min_replicas, "maxReplicas": settings.max_replicas}
    if settings.target_concurrency is not None:
        predictor["scaleMetric"] = "concurrency"
        predictor["scaleTarget"] = settings.target_concurrency
    return predictor


def _service(name: str, predictor: dict[str, Any]) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "onnx-compress"}
    return {"apiVersion": API_VERSION, "kind": "InferenceService",
            "metadata": {"name": name, "labels": labels}, "spec": {"predictor": predictor}}


def kserve_manifests(settings: KServeSettings) -> dict[str, dict[str, Any]]:
    """The two InferenceServices, by file name (see the module docstring)."""
    triton = _predictor(settings)
    triton["model"] = {
        "modelFormat": {"name": "onnx"},
        "runtime": TRITON_RUNTIME,
        "protocolVersion": "v2",
        "storageUri": settings.storage_uri,
        "resources": _resources(settings),
    }
    python = _predictor(settings)
    if settings.batch_size is not None:
        python["batcher"] = {"maxBatchSize": settings.batch_size, "maxLatency": settings.batch_latency_ms}
    python["containers"] = [{
        "name": "kserve-container",
        "image": settings.image,
        "args": ["/mnt/models", "--host", "0.0.0.0", "--port", "8080", "--grpc-port", "0", "--no-access-log"],
        "env": [{"name": "STORAGE_URI", "value": settings.storage_uri}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}},
        "resources": _resources(settings),
    }]
    return {f"{settings.triton_name}.yaml": _service(settings.triton_name, triton),
            f"{settings.python_name}.yaml": _service(settings.python_name, python)}


def dockerfile() -> str:
    """The custom predictor's image: this package's wheel with the ``serve`` extra, not as root."""
    return f"""\
# The KServe custom predictor: `onnx-compress serve` (KServe's model server + ONNX Runtime).
# Build context: this folder with the onnx-compress wheel in it:
#   pip wheel --no-deps -w . /path/to/onnx-compress && docker build -t IMAGE .
FROM python:3.11-slim
COPY {WHEEL} /tmp/
RUN pip install --no-cache-dir "/tmp/{WHEEL}[serve]" && rm /tmp/{WHEEL}
USER 1000
EXPOSE 8080
# KServe's storage initializer puts the Triton repository in /mnt/models; the manifest passes
# its arguments: /mnt/models --host 0.0.0.0 --port 8080 ...
ENTRYPOINT ["onnx-compress", "serve"]
"""


@dataclasses.dataclass(frozen=True)
class KServeDeployment:
    """What :func:`deploy_kserve` wrote."""

    folder: Path
    files: tuple[Path, ...]
    settings: KServeSettings

    def as_dict(self) -> dict[str, object]:
        return {"folder": str(self.folder), "files": [str(f) for f in self.files],
                "settings": dataclasses.asdict(self.settings)}

    def summary(self) -> str:
        names = ", ".join(f.name for f in self.files)
        return (f"wrote {names} to {self.folder}: kubectl apply -f {self.folder / (self.settings.triton_name + '.yaml')} "
                f"(Triton) or -f {self.folder / (self.settings.python_name + '.yaml')} (onnx-compress serve); "
                f"upload the repository to {self.settings.storage_uri} first")


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def deploy_kserve(folder: PathLike, settings: KServeSettings) -> KServeDeployment:
    """Write the manifests and the Dockerfile into ``folder`` (created if missing; files replaced)."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create {out}: {exc}") from exc
    written = []
    for filename, manifest in kserve_manifests(settings).items():
        _write(out / filename, yaml.safe_dump(manifest, sort_keys=False))
        written.append(out / filename)
    _write(out / "Dockerfile", dockerfile())
    written.append(out / "Dockerfile")
    return KServeDeployment(out, tuple(written), settings)
