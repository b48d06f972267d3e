"""deploy_triton / `onnx-compress deploy`: Triton repositories whose config.pbtxt parses as
Triton's own ModelConfig message (from the tritonclient package) and whose model runs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import onnx_compress as oc
from onnx_compress.errors import DeployError, OutputPathError, SettingError
from onnx_compress.runtime import deploy_triton


def _parse(path) -> model_config_pb2.ModelConfig:
    """Parse with Triton's own message, independently of our code."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _type(name: str) -> int:
    return model_config_pb2.DataType.Value(name)


def _outputs(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_seed_cnn_repository_parses_as_triton_config_and_runs(torch_seed_onnx, digits_nchw, tmp_path):
    repo = tmp_path / "repo"
    result = deploy_triton(torch_seed_onnx, repo, "digits", version=3, max_batch=8, instances=2,
                           dynamic_batching=True)
    assert result.config_path == repo / "digits" / "config.pbtxt"
    assert result.model_path == repo / "digits" / "3" / "model.onnx" and result.data_path is None
    config = _parse(result.config_path)
    assert config.name == "digits" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    (inp,), (out,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("input", _type("TYPE_FP32"), [1, 28, 28])
    assert (out.name, out.data_type, list(out.dims)) == ("output", _type("TYPE_FP32"), [10])
    assert not inp.HasField("reshape")
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.HasField("dynamic_batching")
    feeds = {"input": digits_nchw.test.take(5).inputs["input"]}
    np.testing.assert_array_equal(_outputs(result.model_path, feeds)[0], _outputs(torch_seed_onnx, feeds)[0])


def test_minilm_config_int64_inputs_with_two_symbolic_dims(minilm_onnx, tmp_path):
    unbatched = deploy_triton(minilm_onnx, tmp_path / "repo", "minilm")
    config = _parse(unbatched.config_path)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input_ids", _type("TYPE_INT64"), [-1, -1]),
        ("attention_mask", _type("TYPE_INT64"), [-1, -1]),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("embedding", _type("TYPE_FP32"), [-1, 384])
    ]
    batched = deploy_triton(minilm_onnx, tmp_path / "repo", "minilm", version=2, max_batch=16, gpu=True)
    config = _parse(batched.config_path)  # one config per model, rewritten for the new version
    assert config.max_batch_size == 16
    assert [list(i.dims) for i in config.input] == [[-1], [-1]]  # batch axis left out, sequence -1
    assert [list(o.dims) for o in config.output] == [[384]]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert sorted(p.name for p in (tmp_path / "repo" / "minilm").iterdir()) == ["1", "2", "config.pbtxt"]


def _static_batch_copy(source, path):
    model = oc.load_model(source)
    model.graph.inputs[0].shape = ir.Shape([1, 1, 28, 28])
    oc.save_model(model, path)
    return path


def test_static_batch_axis_is_refused_with_batching_and_kept_without(torch_seed_onnx, tmp_path):
    static = _static_batch_copy(torch_seed_onnx, tmp_path / "static.onnx")
    with pytest.raises(DeployError, match="input 'input' has a static batch axis of size 1"):
        deploy_triton(static, tmp_path / "repo", "static", max_batch=4)
    assert not (tmp_path / "repo").exists()  # refused before anything was written
    result = deploy_triton(static, tmp_path / "repo", "static")
    assert list(_parse(result.config_path).input[0].dims) == [1, 1, 28, 28]


def test_batch_only_tensor_gets_dims_1_and_an_empty_reshape(tmp_path):
    # y = x * 2 for x of shape [batch]: Triton requires dims [1] with reshape { shape: [] }
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.INT32, ["batch"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT32, ["batch"])
    two = onnx.helper.make_tensor("two", onnx.TensorProto.INT32, [], [2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Mul", ["x", "two"], ["y"])], "g", [x], [y], [two])
    path = tmp_path / "double.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)
    config = _parse(deploy_triton(path, tmp_path / "repo", max_batch=2).config_path)
    assert config.name == "double"
    for tensor in (config.input[0], config.output[0]):
        assert list(tensor.dims) == [1] and tensor.HasField("reshape") and list(tensor.reshape.shape) == []
        assert tensor.data_type == _type("TYPE_INT32")


def test_external_data_is_written_with_a_relative_location(torch_seed_onnx, digits_nchw, tmp_path):
    source = tmp_path / "src" / "seed.onnx"
    source.parent.mkdir()
    oc.save_model(oc.load_model(torch_seed_onnx), source, external_data=True)
    result = deploy_triton(source, tmp_path / "repo", "seed")
    assert result.data_path == result.model_path.with_name("model.onnx.data")
    proto = onnx.load(str(result.model_path), load_external_data=False)
    locations = {entry.value for tensor in proto.graph.initializer for entry in tensor.external_data
                 if entry.key == "location"}
    assert locations == {"model.onnx.data"}
    feeds = {"input": digits_nchw.test.take(3).inputs["input"]}
    np.testing.assert_array_equal(_outputs(result.model_path, feeds)[0], _outputs(torch_seed_onnx, feeds)[0])


def test_bad_settings_and_existing_versions(torch_seed_onnx, tmp_path):
    repo = tmp_path / "repo"
    for kwargs, message in [
        ({"name": "../escape"}, "not a plain folder name"),
        ({"name": "ok", "version": 0}, "version must be an integer >= 1"),
        ({"name": "ok", "instances": 0}, "instances must be >= 1"),
        ({"name": "ok", "max_batch": -1}, "max_batch must be >= 0"),
        ({"name": "ok", "dynamic_batching": True}, "dynamic_batching needs max_batch > 0"),
    ]:
        with pytest.raises(SettingError, match=message):
            deploy_triton(torch_seed_onnx, repo, **kwargs)
    assert not repo.exists()
    first = deploy_triton(torch_seed_onnx, repo, "seed")
    with pytest.raises(OutputPathError, match="already exists"):
        deploy_triton(torch_seed_onnx, repo, "seed", max_batch=4)
    assert _parse(first.config_path).max_batch_size == 0  # the refused call changed nothing
    again = deploy_triton(torch_seed_onnx, repo, "seed", max_batch=4, overwrite=True)
    assert _parse(again.config_path).max_batch_size == 4


def test_deploy_cli(cli, torch_seed_onnx, tmp_path):
    proc = cli("deploy", torch_seed_onnx, "--triton", tmp_path / "repo", "--name", "digits", "--version", "2",
               "--max-batch", "16", "--instances", "3", "--gpu", "--dynamic-batching", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["model_path"] == str(tmp_path / "repo" / "digits" / "2" / "model.onnx")
    config = _parse(tmp_path / "repo" / "digits" / "config.pbtxt")
    assert config.max_batch_size == 16 and config.instance_group[0].count == 3
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert text_format.Parse(payload["config"], model_config_pb2.ModelConfig()) == config
    refused = cli("deploy", torch_seed_onnx, "--triton", tmp_path / "repo", "--name", "digits", "--version", "2")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: ") and "already exists" in refused.stderr


def _double_model(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3])
    two = onnx.helper.make_tensor("two", onnx.TensorProto.FLOAT, [], [2.0])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Mul", ["x", "two"], ["y"])], "g", [x], [y], [two])
    path = tmp_path / "double.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)
    return path


def test_config_is_readable_by_a_server_running_as_another_user(tmp_path):
    """config.pbtxt is written 0644 (a temporary file is 0600, unreadable by Triton's user),
    also when it replaces an existing one."""
    import stat

    path = _double_model(tmp_path)
    first = deploy_triton(path, tmp_path / "repo", max_batch=4)
    assert stat.S_IMODE(first.config_path.stat().st_mode) == 0o644
    second = deploy_triton(path, tmp_path / "repo", version=2, max_batch=8)
    assert stat.S_IMODE(second.config_path.stat().st_mode) == 0o644
    assert _parse(second.config_path).max_batch_size == 8
    assert not [p for p in second.config_path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_config_schema_loads_from_its_file_without_grpcio(tmp_path):
    """Without grpcio ``tritonclient.grpc`` does not import; the schema module is then loaded
    from its file (it needs only protobuf) and builds and parses the same config."""
    import subprocess
    import sys

    path = _double_model(tmp_path)
    code = (
        "import sys\n"
        "sys.modules['grpc'] = None  # as if grpcio were not installed\n"
        "try:\n"
        "    import tritonclient.grpc\n"
        "    print('grpc importable')\n"
        "except (ImportError, RuntimeError):  # what tritonclient raises without grpcio\n"
        "    print('no grpc')\n"
        "import onnx_compress as oc\n"
        "from onnx_compress.runtime.deploy import model_config as mc\n"
        "module = mc.model_config_module()\n"
        "print(module.__name__)\n"
        f"config = mc.build_model_config(oc.load_model({str(path)!r}), 'double', max_batch=4, dynamic_batching=True)\n"
        "text = mc.config_text(config)\n"
        "print(mc.parse_model_config(text) == config, config.max_batch_size)\n"
        "print(text)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[:3] == ["no grpc", "onnx_compress_triton_model_config_pb2", "True 4"]
    # the text the fallback module wrote parses as Triton's own message (loaded with grpcio here)
    config = text_format.Parse("\n".join(lines[3:]), model_config_pb2.ModelConfig())
    assert config.name == "double" and config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [3])]
