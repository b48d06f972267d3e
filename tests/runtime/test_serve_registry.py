"""Loading models to serve from a Triton-style repository: names, versions, configs, safety."""

from __future__ import annotations

import dataclasses
import shutil

import onnx
import pytest
import tritonclient  # noqa: F401  (required: [serve] installs it; missing fails loudly, never a skip)

import onnx_compress as oc
from onnx_compress.errors import ModelLoadError, SettingError, UnsafeModelError
from onnx_compress.runtime import SessionSettings, deploy_triton
from onnx_compress.runtime.serve.registry import load_models

CPU = SessionSettings(provider="cpu", intra_op_threads=1)


def _config(repo, name):
    return repo / name / "config.pbtxt"


def test_version_policy_latest_by_default_all_or_specific(torch_seed_onnx, tmp_path):
    repo = tmp_path / "repo"
    for version in (1, 2, 5):
        deploy_triton(torch_seed_onnx, repo, "digits", version=version, max_batch=4)
    (repo / "digits" / "notes").mkdir()  # not a version folder: ignored, as Triton does
    registry = load_models(repo, CPU)
    assert registry.names == ["digits"] and registry.versions("digits") == [5]
    original = _config(repo, "digits").read_text()
    _config(repo, "digits").write_text(original + "version_policy { all { } }\n")
    registry = load_models(repo, CPU)
    assert registry.versions("digits") == [1, 2, 5]
    assert registry.find("digits").version == 5 and registry.find("digits", "2").version == 2
    assert registry.find("digits", "3") is None and registry.find("digits", "x") is None
    assert registry.find("digits").max_batch == 4
    _config(repo, "digits").write_text(original + "version_policy { specific { versions: [1, 2] } }\n")
    assert load_models(repo, CPU).versions("digits") == [1, 2]
    _config(repo, "digits").write_text(original + "version_policy { specific { versions: [7] } }\n")
    with pytest.raises(ModelLoadError, match=r"version\(s\) \[7\], not found"):
        load_models(repo, CPU)


def test_single_file_and_folder_without_config(torch_seed_onnx, tmp_path):
    registry = load_models(torch_seed_onnx, CPU, name="seed")
    model = registry.find("seed")
    assert model.version == 1 and model.max_batch == 0 and model.config.platform == "onnxruntime_onnx"
    (tmp_path / "repo" / "bare" / "3").mkdir(parents=True)
    shutil.copy(torch_seed_onnx, tmp_path / "repo" / "bare" / "3" / "model.onnx")
    (tmp_path / "repo" / "empty").mkdir()  # neither config nor versions: skipped with a warning
    registry = load_models(tmp_path / "repo", CPU)
    assert registry.names == ["bare"] and registry.versions("bare") == [3]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace('name: "digits"', 'name: "other"'), "differs from its folder"),
        (lambda text: text.replace('platform: "onnxruntime_onnx"', 'platform: "tensorflow_savedmodel"'),
         "only ONNX models"),
        (lambda text: text.replace("TYPE_FP32", "TYPE_FP16", 1), "type TYPE_FP16, the model has TYPE_FP32"),
        (lambda text: text.replace('name: "input"', 'name: "pixels"'), "tensor 'pixels', which the model does not have"),
        (lambda text: text + "max_batch_size: oops\n", "not a valid Triton model configuration"),
    ],
)
def test_inconsistent_configs_stop_the_server_at_start(torch_seed_onnx, tmp_path, edit, message):
    repo = tmp_path / "repo"
    deploy_triton(torch_seed_onnx, repo, "digits", max_batch=4)
    _config(repo, "digits").write_text(edit(_config(repo, "digits").read_text()))
    with pytest.raises(ModelLoadError, match=message):
        load_models(repo, CPU)


def test_external_data_leaving_the_model_folder_is_refused(torch_seed_onnx, tmp_path):
    repo = tmp_path / "repo"
    deployed = deploy_triton(torch_seed_onnx, repo, "digits")
    oc.save_model(oc.load_model(torch_seed_onnx), tmp_path / "outside.onnx", external_data=True)
    proto = onnx.load(str(tmp_path / "outside.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../../outside.onnx.data"
    onnx.save(proto, deployed.model_path)
    with pytest.raises(UnsafeModelError, match="leaves the model's folder"):
        load_models(repo, CPU)


def test_nothing_to_serve(tmp_path):
    with pytest.raises(ModelLoadError, match="nothing to serve"):
        load_models(tmp_path / "missing", CPU)
    (tmp_path / "repo").mkdir()
    with pytest.raises(ModelLoadError, match="no models found"):
        load_models(tmp_path / "repo", CPU)


def test_server_sessions_do_not_spin_and_settings_survive_the_server_process():
    from onnx_compress.runtime.serve import ServeSettings

    settings = ServeSettings(port=9000, grpc_port=9001, concurrency=3,
                             session=SessionSettings(provider="cpu", spinning=False))
    assert ServeSettings().session.spinning is False and ServeSettings().host == "127.0.0.1"
    options = settings.session.session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert ServeSettings.from_json(settings.to_json()) == settings  # what the server process rebuilds
    with pytest.raises(Exception, match=r"port must be an integer in \[1, 65535\]"):
        ServeSettings(port=70000)
    with pytest.raises(Exception, match="must differ"):
        ServeSettings(port=9000, grpc_port=9000)
    assert ServeSettings(grpc_port=None).grpc_port is None
    assert ServeSettings(grpc_port=0).grpc_port is None  # 0: no gRPC, as on the command line
    half = ServeSettings(max_request_mb=0.5)
    assert half.max_request_bytes == 2**19 and ServeSettings.from_json(half.to_json()) == half
    assert dataclasses.replace(half, max_request_bytes=1024).max_request_bytes == 1024  # the limit is held once
    with pytest.raises(SettingError, match="max_request_mb must be a number > 0"):
        ServeSettings(max_request_mb=0.0)
