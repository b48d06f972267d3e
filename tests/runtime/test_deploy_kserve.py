"""`deploy --kserve`: InferenceService manifests checked against KServe's own models (the
`kserve` package's generated V1beta1* classes, the schema of its CRDs) and Kubernetes' models."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from onnx_compress.errors import SettingError
from onnx_compress.runtime.deploy.kserve import WHEEL, KServeSettings, deploy_kserve, kserve_manifests, kserve_settings

SCHEMA = Path(__file__).with_name("kserve_schema.py")


def _validate(*documents: dict[str, Any], folder: Path) -> subprocess.CompletedProcess:
    """Run kserve_schema.py (its own process: kserve and tritonclient.grpc clash) on the documents."""
    paths = []
    for index, document in enumerate(documents):
        paths.append(folder / f"manifest-{index}.yaml")
        paths[-1].write_text(yaml.safe_dump(document))
    return subprocess.run([sys.executable, str(SCHEMA), *map(str, paths)], capture_output=True, text=True, timeout=300)


SETTINGS = KServeSettings(name="digits", storage_uri="s3://bucket/models", min_replicas=0, max_replicas=4,
                          target_concurrency=8, cpu="500m", memory="1Gi", batch_size=16, batch_latency_ms=5)


def test_manifests_validate_against_kserve_models_and_carry_the_settings(tmp_path):
    manifests = kserve_manifests(SETTINGS)
    assert sorted(manifests) == ["digits-onnxruntime.yaml", "digits-triton.yaml"]
    with_gpu = kserve_manifests(KServeSettings(name="d", storage_uri="pvc://claim/m", gpus=1))
    checked = _validate(*manifests.values(), *with_gpu.values(), folder=tmp_path)
    assert checked.returncode == 0 and checked.stdout.strip() == "4 valid", checked.stdout + checked.stderr
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
    assert with_gpu["d-triton.yaml"]["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_the_validator_catches_what_kserve_does_not_know(tmp_path):
    typo = kserve_manifests(SETTINGS)["digits-triton.yaml"]
    typo["spec"]["predictor"]["minReplica"] = 1
    wrong_type = kserve_manifests(SETTINGS)["digits-triton.yaml"]
    wrong_type["spec"]["predictor"]["maxReplicas"] = "4"  # a string where KServe wants an int
    container_typo = kserve_manifests(SETTINGS)["digits-onnxruntime.yaml"]
    container_typo["spec"]["predictor"]["containers"][0]["resource"] = {}  # Kubernetes' V1Container field is 'resources'
    checked = _validate(typo, wrong_type, container_typo, folder=tmp_path)
    lines = checked.stdout.strip().splitlines()
    assert checked.returncode == 1 and len(lines) == 3, checked.stdout + checked.stderr
    assert "has no field(s) ['minReplica']" in lines[0] and "maxReplicas" in lines[1]
    assert "V1Container has no field(s) ['resource']" in lines[2]


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
    paths = sorted(k8s.glob("*.yaml"))
    checked = subprocess.run([sys.executable, str(SCHEMA), *map(str, paths)], capture_output=True, text=True,
                             timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in paths)
    dockerfile = (k8s / "Dockerfile").read_text()
    assert f"COPY {WHEEL}" in dockerfile and 'ENTRYPOINT ["onnx-compress", "serve"]' in dockerfile


def test_deploy_cli_refuses_a_bad_manifest_request_in_one_line_before_writing(torch_seed_onnx, tmp_path):
    repo = tmp_path / "repo"
    script = [sys.executable, "-m", "onnx_compress.cli.main", "deploy", str(torch_seed_onnx), "--triton", str(repo),
              "--kserve", str(tmp_path / "k8s")]
    for extra, message in [(["--storage-uri", "s3://b/m", "--memory", "2GB"], "memory '2GB'"),
                           (["--storage-uri", "s3://b/m", "--name", "9lives"], "'9lives' is not a DNS-1035"),
                           ([], "need storage_uri (CLI: --storage-uri)")]:
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


def test_kserve_settings_name_the_services_after_the_model_and_need_a_storage_uri():
    settings = kserve_settings(Path("models/Digits_CNN.v2.onnx"), storage_uri="s3://bucket/repo", cpu="500m")
    assert (settings.name, settings.triton_name, settings.cpu) == ("digits-cnn-v2", "digits-cnn-v2-triton", "500m")
    assert kserve_settings("m.onnx", "My_Model", storage_uri="pvc://claim/m").name == "my-model"
    with pytest.raises(SettingError, match=r"KServe manifests need storage_uri \(CLI: --storage-uri\)"):
        kserve_settings("m.onnx")
