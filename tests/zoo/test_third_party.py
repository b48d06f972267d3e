"""Models other converters write: normalization makes their weights plain initializers, and no
pass crashes on them, duplicates constants across If branches or grows a model silently."""

from __future__ import annotations

import json
from pathlib import Path

import graphs
import matrix
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_compress.cli.main import main
from onnx_compress.passes import Normalize, PruneStructured, PruneUnstructured, Quantize
from onnx_compress.passes.lowrank import LowRank
from onnx_compress.passes.normalize_patterns import constant_bytes, is_sorted
from onnx_compress.runtime import Runner

_WEIGHT_OPS = {"Conv": (1, 2), "MatMul": (1,), "Gemm": (1, 2)}


def _model(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def _image(batch: int = 4, h: int = 32, w: int = 48, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).random((batch, 3, h, w), dtype=np.float32)}


def _cli(capsys, *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_paddle_patterns_become_plain_initializers_and_outputs_hold():
    proto = graphs.paddle_like_classifier()
    model = _model(proto)
    result = Normalize()(model)
    out = result.model
    for node in out.graph:
        for index in _WEIGHT_OPS.get(node.op_type, ()):
            if index < len(node.inputs) and node.inputs[index] is not None:
                value = node.inputs[index]
                assert value.is_initializer() and not value.is_graph_input(), (node.name, index)
    ops = result.ops_after
    # Identity / Reshape / Transpose / Cast / Unsqueeze of weights folded, 5 bias Adds into Conv, BN into Conv
    assert "Identity" not in ops and "Transpose" not in ops and "Cast" not in ops and "Unsqueeze" not in ops
    assert "BatchNormalization" not in ops and ops["Add"] == 1  # the head's MatMul + bias stays
    assert len(result.conv_bias_folded) == 5
    assert result.growth and "float16" in result.growth[0]  # the Cast weight is stored as float32 now
    feeds = _image()
    for got, want in zip(Runner(out).run(feeds), Runner(model).run(feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_runtime_quantizer_rejects_the_raw_paddle_graph_ours_quantizes_it(tmp_path, capsys):
    from onnxruntime.quantization import quantize_dynamic

    path = tmp_path / "paddle.onnx"
    onnx.save(graphs.paddle_like_classifier(), path)
    with pytest.raises(ValueError, match="to be an initializer"):  # the pattern is real
        quantize_dynamic(str(path), str(tmp_path / "ort.onnx"), op_types_to_quantize=["Conv", "MatMul"])
    code, payload = _cli(capsys, "quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--mode", "dynamic",
                         "--guard", "off")
    assert code == 0 and payload["quantized_op_types"].get("Conv", 0) >= 1


def test_static_int8_of_an_opset11_paddle_graph_is_a_valid_model():
    """ONNX Runtime writes per-channel DequantizeLinear(axis) into opset 11 (INVALID_GRAPH); the
    pass upgrades such models to opset 13 first."""
    model = Normalize()(_model(graphs.paddle_like_detector())).model
    assert model.opset_imports[""] == 11
    calib = _image(batch=8, h=32, w=32, seed=1)
    quantize = Quantize(mode="static", guard="off", calibration=calib)
    quantize.progress = False
    result = quantize(model)
    assert result.modified and result.quantized_op_types["Conv"] >= 5
    assert result.model.opset_imports[""] >= 13
    feeds = _image(batch=2, h=32, w=32, seed=2)
    got, want = Runner(result.model).run(feeds)[0], Runner(model).run(feeds)[0]
    assert got.shape == want.shape and np.abs(got - want).max() < 0.1  # sigmoid maps: int8 noise, not garbage


def test_opset9_constant_of_shape_weights_are_seen_by_the_standalone_commands(tmp_path, capsys):
    path = tmp_path / "opset9.onnx"
    onnx.save(graphs.opset9_constant_weights(), path)
    normalized = Normalize()(_model(onnx.load(path)))
    assert normalized.constant_of_shape_folded == 6 and len(normalized.initializer_inputs) == 13
    assert normalized.model.ir_version >= 4
    code, payload = _cli(capsys, "quantize", str(path), "-o", str(tmp_path / "q.onnx"), "--mode", "dynamic",
                         "--guard", "off")
    assert code == 0 and payload["quantized"], payload.get("nothing_to_do")
    code, payload = _cli(capsys, "prune", str(path), "-o", str(tmp_path / "p.onnx"), "--structured", "0.5")
    assert code == 0 and payload["result"]["params_after"] < payload["result"]["params_before"]
    code, payload = _cli(capsys, "lowrank", str(path), "-o", str(tmp_path / "l.onnx"), "--energy", "0.5",
                         "--min-size", "1024")
    assert code == 0 and any(layer["factored"] for layer in payload["layers"])


def test_unsorted_graph_is_sorted_on_a_copy():
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["h", "w"], ["y"], name="second"),
             helper.make_node("Relu", ["x"], ["h"], name="first")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    model = _model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(RuntimeError, match="clone_graph"):  # what every pass's copy did before
        model.clone()
    result = Normalize()(model)
    assert result.sorted_graph and is_sorted(result.model.graph)
    assert [n.name for n in model.graph] == ["second", "first"]  # the input is untouched
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(Runner(result.model).run({"x": x})[0], np.maximum(x, 0), rtol=1e-6)


@pytest.fixture(scope="module")
def vad() -> ir.Model:
    return _model(graphs.if_branch_vad())


def _vad_feeds(sr: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sr)
    return {"input": rng.random((3, 64), dtype=np.float32), "state": rng.random((3, 128), dtype=np.float32),
            "sr": np.array(sr, dtype=np.int64)}


def test_if_branches_keep_shared_weights_shared(vad):
    result = Normalize()(vad)
    # the Transpose of one outer weight written in both branches is computed once, outside
    assert result.subgraph_constants_hoisted == 1 and result.subgraph_constants_merged == 1
    assert result.constant_bytes_after <= result.constant_bytes_before and not result.growth
    for sr in (16000, 8000):
        for got, want in zip(Runner(result.model).run(_vad_feeds(sr)), Runner(vad).run(_vad_feeds(sr))):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_passes_reach_or_refuse_subgraph_layers_and_never_grow_the_model(vad):
    normalized = Normalize()(vad).model
    size = constant_bytes(normalized)
    quantize = Quantize(mode="dynamic", guard="off")
    quantized = quantize(normalized)
    # weight layers inside both branches (Gemm as MatMul + Add); the shared weights quantized once
    assert quantized.modified and sum(quantized.quantized_op_types.values()) >= 10
    assert quantized.size_after < 0.4 * quantized.size_before
    branch_ops = {n.op_type for n in ir.traversal.RecursiveGraphIterator(quantized.model.graph)}
    assert "MatMulInteger" in branch_ops
    got = Runner(quantized.model).run(_vad_feeds(16000))[1]
    want = Runner(normalized).run(_vad_feeds(16000))[1]
    assert np.abs(got - want).max() < 0.05

    structured = PruneStructured(ratio=0.5)(normalized)
    assert not structured.modified and constant_bytes(structured.model) <= size
    inside = [g for g in structured.untouched if "inside the body of If" in g.reason]
    assert len(inside) == 14  # 7 weight layers per branch, each named with the reason

    sparse = PruneUnstructured(ratio=0.5, protect_first_last=False)(normalized)
    assert sparse.modified and sparse.sparsity > 0.45 and constant_bytes(sparse.model) <= size

    factored = LowRank(energy=0.9, min_size=1024)(normalized)
    assert not factored.modified and constant_bytes(factored.model) <= size
    assert all("inside the body of If" in layer.reason for layer in factored.left_alone)


def test_cli_says_why_an_output_is_larger(tmp_path, capsys):
    """The Cast-of-float16 weights of the paddle-like graph are stored as float32: the output of
    lowrank is larger than its input file, and the command says so and why."""
    path = tmp_path / "paddle.onnx"
    onnx.save(graphs.paddle_like_classifier(), path)
    out = tmp_path / "l.onnx"
    code = main(["lowrank", str(path), "-o", str(out), "--energy", "0.99"])
    text = capsys.readouterr().out
    assert code == 0 and out.stat().st_size > path.stat().st_size
    assert "WARNING: the factored model is larger than the input" in text and "float16" in text


def test_matrix_sample_has_no_internal_error(tmp_path):
    models = {}
    for name in ("paddle_like_classifier", "paddle_like_detector", "opset9_constant_weights", "if_branch_vad"):
        models[name] = tmp_path / f"{name}.onnx"
        onnx.save(getattr(graphs, name)(), models[name])
    cells = matrix.run_matrix(models, workdir=tmp_path)
    table = matrix.format_matrix(cells)
    print(table)
    assert not [c for c in cells if c.status == "error"], table
    applied = sum(c.status == "applied" for c in cells)
    assert applied / len(cells) >= 0.85, table
    refused = {(c.model, c.pass_name): c.detail for c in cells if c.status == "refused"}
    # subgraph layers: structured pruning and low-rank say why per node; a scalar input cannot be
    # batched into calibration samples
    assert set(refused) <= {("if_branch_vad", "lowrank"), ("if_branch_vad", "prune --structured"),
                            ("if_branch_vad", "quantize static")}, refused
    assert all(detail for detail in refused.values())


@pytest.mark.slow
def test_full_zoo_matrix(tmp_path):
    """Keras Applications (tf2onnx), torchvision-style torch models (TorchScript and dynamo
    exports), ONNX's opset-9 test models and the hand-built graphs, every standalone command."""
    models = matrix.zoo_models(tmp_path)
    cells = matrix.run_matrix(models, workdir=tmp_path)
    table = matrix.format_matrix(cells)
    print(table)
    Path(tmp_path / "matrix.md").write_text(table)
    assert not [c for c in cells if c.status == "error"], table
    assert sum(c.status == "applied" for c in cells) / len(cells) >= 0.85, table
