"""`deploy --kserve`: InferenceService manifests checked against KServe's own models (the
`kserve` package's generated V1beta1* classes, the schema of its CRDs) and Kubernetes' models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from onnx_compress.errors import SettingError
from onnx_compress.runtime.deploy.kserve import WHEEL, KServeSettings, deploy_kserve, kserve_manifests

_LIST = re.compile(r"^[lL]ist\[(.+)\]$")  # kserve writes list[X], kubernetes List[X]
_DICT = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")
_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def _models() -> tuple[Any, Any]:
    """kserve.models and kubernetes.client.models, kserve imported in a child-safe way."""
    saved, sys.argv = sys.argv, sys.argv[:1]  # kserve.model_server parses sys.argv when imported
    try:
        import kserve.models as kserve_models
        import kubernetes.client.models as kubernetes_models
    finally:
        sys.argv = saved
    return kserve_models, kubernetes_models


def _build(value: Any, kind: str, where: str) -> Any:
    """``value`` (parsed YAML) as the OpenAPI type ``kind`` of KServe's / Kubernetes' generated
    models: an unknown field, a wrong type or a missing required field fails."""
    kserve_models, kubernetes_models = _models()
    if (match := _LIST.match(kind)) is not None:
        assert isinstance(value, list), where
        return [_build(item, match.group(1), f"{where}[{index}]") for index, item in enumerate(value)]
    if (match := _DICT.match(kind)) is not None:
        assert isinstance(value, dict), where
        return {key: _build(item, match.group(1) or match.group(2), f"{where}.{key}") for key, item in value.items()}
    if kind in _PRIMITIVES:
        assert isinstance(value, _PRIMITIVES[kind]) and not (kind == "int" and isinstance(value, bool)), (where, value)
        return value
    cls = getattr(kserve_models, kind, None) or getattr(kubernetes_models, kind)
    assert isinstance(value, dict), where
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json))
    assert not unknown, f"{where}: {kind} has no field(s) {unknown}"
    return cls(**{by_json[key]: _build(item, cls.openapi_types[by_json[key]], f"{where}.{key}")
                  for key, item in value.items()})


def _validate_inference_service(document: dict[str, Any]) -> None:
    assert document["apiVersion"] == "serving.kserve.io/v1beta1" and document["kind"] == "InferenceService"
    _build(document, "V1beta1InferenceService", "InferenceService")


SETTINGS = KServeSettings(name="digits", storage_uri="s3://bucket/models", min_replicas=0, max_replicas=4,
                          target_concurrency=8, cpu="500m", memory="1Gi", batch_size=16, batch_latency_ms=5)


def test_manifests_validate_against_kserve_models_and_carry_the_settings():
    manifests = kserve_manifests(SETTINGS)
    assert sorted(manifests) == ["digits-onnxruntime.yaml", "digits-triton.yaml"]
    for document in manifests.values():
        _validate_inference_service(yaml.safe_load(yaml.safe_dump(document)))
    triton = manifests["digits-triton.yaml"]["spec"]["predictor"]
    assert triton["model"]["modelFormat"] == {"name": "onnx"} and triton["model"]["runtime"] == "kserve-tritonserver"
    assert triton["model"]["storageUri"] == "s3://bucket/models" and triton["model"]["protocolVersion"] == "v2"
    for predictor in (triton, manifests["digits-onnxruntime.yaml"]["spec"]["predictor"]):
        assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 4)
        assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 8)
    python = manifests["digits-onnxruntime.yaml"]["spec"]["predictor"]
    container = python["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"} == container["resources"]["requests"]
    assert {"name": "STORAGE_URI", "value": "s3://bucket/models"} in container["env"]
    assert container["args"][:1] == ["/mnt/models"] and "0.0.0.0" in container["args"]
    assert python["batcher"] == {"maxBatchSize": 16, "maxLatency": 5}
    with_gpu = kserve_manifests(KServeSettings(name="d", storage_uri="pvc://claim/m", gpus=1))
    assert with_gpu["d-triton.yaml"]["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_validator_catches_what_kserve_does_not_know():
    document = kserve_manifests(SETTINGS)["digits-triton.yaml"]
    document["spec"]["predictor"]["minReplica"] = 1  # a typo
    with pytest.raises(AssertionError, match="no field"):
        _validate_inference_service(document)
    document = kserve_manifests(SETTINGS)["digits-triton.yaml"]
    document["spec"]["predictor"]["maxReplicas"] = "4"  # a string where KServe wants an int
    with pytest.raises(AssertionError):
        _validate_inference_service(document)


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "Digits"}, "DNS-1035"),
    ({"name": "1digits"}, "DNS-1035"),
    ({"name": "d" * 60}, "at most 51"),
    ({"cpu": "1.5x"}, "cpu '1.5x' is not a positive Kubernetes quantity"),
    ({"memory": "0Gi"}, "memory '0Gi'"),
    ({"memory": "lots"}, "memory 'lots'"),
    ({"storage_uri": "models/"}, "needs a scheme"),
    ({"min_replicas": 3, "max_replicas": 2}, "below min_replicas"),
    ({"target_concurrency": 0}, "target_concurrency must be an integer >= 1"),
    ({"batch_size": 8}, "needs both"),
])
def test_invalid_settings_are_one_line_errors(change, message):
    values = {"name": "digits", "storage_uri": "s3://bucket/models", **change}
    with pytest.raises(SettingError, match=re.escape(message)) as info:
        KServeSettings(**values)
    assert "\n" not in str(info.value)


def test_quantities_accepted_are_kubernetes_quantities():
    from kubernetes.utils import parse_quantity

    for value in ("500m", "2", "1.5", "1Gi", "512Mi", "1.5G", ".5"):
        settings = KServeSettings(name="d", storage_uri="s3://b/m", cpu=value, memory=value)
        assert parse_quantity(settings.cpu) > 0


def test_deploy_cli_writes_repository_manifests_and_dockerfile(torch_seed_onnx, tmp_path):
    from onnx_compress.cli.main import main

    repo, k8s = tmp_path / "repo", tmp_path / "k8s"
    assert main(["deploy", str(torch_seed_onnx), "--triton", str(repo), "--name", "digits_cnn", "--max-batch", "8",
                 "--dynamic-batching", "--kserve", str(k8s), "--storage-uri", "gs://bucket/repo",
                 "--max-replicas", "3", "--target-concurrency", "4", "--cpu", "2", "--memory", "1Gi", "--json"]) == 0
    assert (repo / "digits_cnn" / "config.pbtxt").is_file()
    assert sorted(p.name for p in k8s.iterdir()) == ["Dockerfile", "digits-cnn-onnxruntime.yaml",
                                                     "digits-cnn-triton.yaml"]
    for path in k8s.glob("*.yaml"):
        _validate_inference_service(yaml.safe_load(path.read_text()))
        assert path.stat().st_mode & 0o777 == 0o644
    dockerfile = (k8s / "Dockerfile").read_text()
    assert f"COPY {WHEEL}" in dockerfile and 'ENTRYPOINT ["onnx-compress", "serve"]' in dockerfile


def test_deploy_cli_refuses_a_bad_manifest_request_in_one_line_before_writing(torch_seed_onnx, tmp_path):
    repo = tmp_path / "repo"
    script = [sys.executable, "-m", "onnx_compress.cli.main", "deploy", str(torch_seed_onnx), "--triton", str(repo),
              "--kserve", str(tmp_path / "k8s")]
    for extra, message in [(["--storage-uri", "s3://b/m", "--memory", "2GB"], "memory '2GB'"),
                           (["--storage-uri", "s3://b/m", "--name", "9lives"], "'9lives' is not a DNS-1035"),
                           ([], "--kserve needs --storage-uri")]:
        done = subprocess.run(script + extra, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not repo.exists() and not (tmp_path / "k8s").exists()  # nothing written


def test_deploy_kserve_writes_readable_yaml(tmp_path):
    deployment = deploy_kserve(tmp_path / "out", SETTINGS)
    assert [p.name for p in deployment.files] == ["digits-triton.yaml", "digits-onnxruntime.yaml", "Dockerfile"]
    loaded = yaml.safe_load((tmp_path / "out" / "digits-triton.yaml").read_text())
    assert loaded == kserve_manifests(SETTINGS)["digits-triton.yaml"]
    json.dumps(deployment.as_dict())
