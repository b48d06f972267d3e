"""Loading and saving ONNX models: bad files, unsafe external data, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_compress.errors import ModelLoadError, OutputPathError, UnsafeModelError
from onnx_compress.model_io import load_model, model_files, save_model


def _tiny_model(rows: int = 4) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(rows * 3, dtype=np.float32).reshape(rows, 3), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _with_external_location(tmp_path, location: str):
    proto = _tiny_model()
    tensor = proto.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.external_data.add(key="location", value=location)
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir()
    onnx.save(proto, path)
    return path


def test_bad_files_give_model_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model(tmp_path / "empty.onnx")
    (tmp_path / "text.onnx").write_text("this is not a model")
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "text.onnx")
    good = _tiny_model().SerializeToString()
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "truncated.onnx")
    with pytest.raises(ModelLoadError, match="directory"):
        load_model(tmp_path)


def test_a_node_reading_an_undefined_value_is_refused(tmp_path):
    """Found by the long fuzz run: a renamed edge left Relu reading a value nothing defines."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="first"),
         helper.make_node("Relu", ["renamed"], ["y"], name="second")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "dangling.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ModelLoadError, match="node 'second' reads 'renamed'"):
        load_model(path)
    # nodes listed out of order are still a valid graph
    unsorted = helper.make_graph([helper.make_node("Relu", ["h"], ["y"]), helper.make_node("Relu", ["x"], ["h"])],
                                 "g", graph.input, graph.output)
    onnx.save(helper.make_model(unsorted), path)
    assert len(load_model(path).graph) == 2


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin", "sub/../../secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    path = _with_external_location(tmp_path, location)
    with pytest.raises(UnsafeModelError):
        load_model(path)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(12, dtype=np.float32).tobytes())
    path = _with_external_location(tmp_path, "weights.bin")
    os.symlink(outside, path.parent / "weights.bin")
    with pytest.raises(UnsafeModelError, match="outside the model's folder"):
        load_model(path)


def test_missing_or_short_data_file_is_named(tmp_path):
    path = _with_external_location(tmp_path, "weights.bin")
    with pytest.raises(ModelLoadError, match="external data file not found: weights.bin"):
        load_model(path)


def test_save_is_atomic_and_refuses_the_input(tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save(_tiny_model(), src)
    model = load_model(src)
    with pytest.raises(OutputPathError, match="overwrite the input"):
        save_model(model, src, protected=model_files(src))
    with pytest.raises(OutputPathError, match="folder does not exist"):
        save_model(model, tmp_path / "nope" / "out.onnx")
    out = save_model(model, tmp_path / "out.onnx", protected=model_files(src))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]  # no temp leftovers
    np.testing.assert_array_equal(
        load_model(out).graph.initializers["W"].const_value.numpy(), np.arange(12, dtype=np.float32).reshape(4, 3)
    )


def test_external_data_round_trip_with_one_relative_file(tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save(_tiny_model(rows=1000), src)  # 12 kB: above the 1 kB external-tensor threshold
    out = save_model(load_model(src), tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    files = model_files(out)
    assert [f.name for f in files] == ["ext.onnx", "ext.onnx.data"]
    proto = onnx.load(out, load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"ext.onnx.data"}
    reloaded = load_model(out)
    assert isinstance(reloaded, ir.Model)
    np.testing.assert_array_equal(reloaded.graph.initializers["W"].const_value.numpy().ravel(), np.arange(3000))
