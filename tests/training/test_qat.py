"""Quantization-aware recovery: the int8 model the quantize pass writes is the one that was trained
(its activation scales are the learned ranges), side by side with post-training int8."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from onnx_compress.errors import SettingError
from onnx_compress.model_io import load_model
from onnx_compress.passes.quantize import Quantize, QuantizeSettings
from onnx_compress.passes.quantize.ranges import METADATA_KEY, read_ranges, shared_ranges
from onnx_compress.training.qat import QatGraphModule, QatTarget, plan_qat
from onnx_compress.training.recover import RecoverySettings, recover

from .conftest import top1


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _activation_scales(model: ir.Model) -> dict[str, float]:
    """{tensor: scale} of every QuantizeLinear of an activation in a QDQ model."""
    proto = ir.serde.serialize_model(model)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    return {n.input[0]: float(constants[n.input[1]]) for n in proto.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in constants}


def test_the_plan_is_the_quantize_pass_choice(pruned_torch_seed, small_splits):
    model = load_model(pruned_torch_seed)
    plan = plan_qat(model)  # static int8, default settings
    assert plan.mode == "static" and set(plan.nodes) == {n.name for n in model.graph if n.op_type in ("Conv", "Gemm")}
    assert list(plan.activations) == [n.inputs[0].name for n in model.graph if n.op_type in ("Conv", "Gemm")]
    assert (plan.act_qmin, plan.act_qmax) == (0, 255)  # uint8 activations on x86-64, as the pass chooses
    dense_only = plan_qat(model, QatTarget(QuantizeSettings(mode="dynamic", op_types=("Gemm",),
                                                            min_weight_elements=0)))
    assert dense_only.mode == "dynamic" and all("linear" in n for n in dense_only.nodes)
    assert any("op type not quantized" in s for s in dense_only.skipped)
    # dynamic int8 (the tiny preset's step): each batch quantized with its own range, no ranges kept
    module = QatGraphModule(model, dense_only)
    feeds = {"input": small_splits["val"].take(16).inputs["input"]}
    with torch.no_grad():
        simulated = module(**feeds)["output"]
        module.simulate = False
        exact = module(**feeds)["output"]
    assert not torch.equal(simulated, exact) and float((simulated - exact).abs().max()) < 0.05 * float(exact.abs().max())
    assert module.activation_ranges() == {}
    with pytest.raises(SettingError, match="qat simulates int8"):
        plan_qat(model, QatTarget(QuantizeSettings(mode="fp16")))


def test_ranges_follow_the_tensors_onnx_runtime_quantizes_alike(pruned_torch_seed):
    graph = onnx.load(str(pruned_torch_seed)).graph
    # the second Conv reads MaxPool(Relu(Conv1)): all three tensors share its parameters in ONNX Runtime
    shared = shared_ranges(graph, {"max_pool2d": (0.0, 2.0), "nowhere": (0.0, 1.0)})
    assert shared == {"max_pool2d": (0.0, 2.0), "relu": (0.0, 2.0), "conv2d": (0.0, 2.0)}


def test_qat_int8_model_uses_the_trained_ranges(pruned_torch_seed, torch_seed_onnx, small_splits, digits_nchw,
                                                digits_files, tmp_path):
    train = small_splits["train"].take(512).save(tmp_path / "train.npz")
    inputs = [pruned_torch_seed, torch_seed_onnx, train, digits_files["NCHW"]["val"]]
    digests = [_digest(p) for p in inputs]
    settings = RecoverySettings(epochs=2, lr=3e-3, batch_size=32, patience=2, qat="on")
    model, result = recover(*inputs, settings, progress=False)
    assert result.improved and result.parity < 1e-4  # parity of the float write-back (simulation off)
    assert result.qat["mode"] == "static" and len(result.qat["nodes"]) == 4
    ranges = read_ranges(model)
    assert set(ranges) == set(result.qat["activations"]) and METADATA_KEY in model.metadata_props
    calib = digits_nchw.calib
    qat_int8 = Quantize(mode="static", guard="off", calibration=calib)(model)
    assert any(c.setting == "activation ranges" and "from QAT" in str(c.value) for c in qat_int8.choices)
    # the same weights calibrated after training (no ranges): post-training int8
    plain = model.clone()
    del plain.metadata_props[METADATA_KEY]
    ptq_int8 = Quantize(mode="static", guard="off", calibration=calib)(plain)
    qat_scales, ptq_scales = _activation_scales(qat_int8.model), _activation_scales(ptq_int8.model)
    differ = 0
    for name, (lo, hi) in ranges.items():
        expected = (max(hi, 0.0) - min(lo, 0.0)) / 255  # uint8 activations, ONNX Runtime's compute_scale_zp
        assert qat_scales[name] == pytest.approx(expected, rel=1e-5), name
        differ += abs(ptq_scales[name] - expected) > 1e-3 * expected
    assert differ >= 2, (qat_scales, ptq_scales)  # calibration would have written other scales
    # the int8 model is the model that was trained: its validation top-1 is the simulated one
    assert abs(top1(qat_int8.model, small_splits["val"]) - result.after) <= 1.0
    assert top1(qat_int8.model, small_splits["test"]) >= top1(model, small_splits["test"]) - 1.0
    assert [_digest(p) for p in inputs] == digests  # inputs untouched


@pytest.mark.slow
def test_qat_versus_post_training_int8_side_by_side(pruned_torch_seed, torch_seed_onnx, small_splits, digits_nchw):
    """Same cut, same training budget: recovery then post-training int8, and QAT then int8.
    Bound: QAT's int8 test top-1 is at most 1 point below post-training int8's (on 360 test
    images one image is 0.28 points)."""
    rows = {}
    for qat in ("off", "on"):
        settings = RecoverySettings(epochs=6, lr=3e-3, batch_size=32, patience=6, qat=qat)
        model, result = recover(pruned_torch_seed, torch_seed_onnx, small_splits["train"], small_splits["val"],
                                settings, progress=False)
        int8 = Quantize(mode="static", guard="off", calibration=digits_nchw.calib)(model).model
        rows[qat] = (top1(model, small_splits["test"]), top1(int8, small_splits["test"]))
    assert rows["on"][1] >= rows["off"][1] - 1.0, rows
    assert abs(rows["on"][1] - rows["on"][0]) <= 1.0, rows  # QAT: int8 as good as its float weights


@pytest.mark.slow
def test_a_recipe_with_qat_trains_the_int8_model_its_quantize_step_writes(torch_seed_onnx, digits_files):
    from onnx_compress.pipeline import PipelineSettings, compress

    files = digits_files["NCHW"]
    recipe = {"passes": [{"prune_structured": {"ratio": 0.85}},
                         {"recover": {"epochs": 2, "lr": 0.003, "patience": 2, "qat": "on"}},
                         {"quantize": {"mode": "static", "guard": "off"}}]}
    outcome = compress(torch_seed_onnx, recipe, calib=files["calib"], val=files["val"], train=files["train"],
                       settings=PipelineSettings(bench_runs=3))
    stages = outcome.report.stages
    recovery = stages[2].pass_result["recovery"]
    assert recovery["improved"] and recovery["qat"]["mode"] == "static" and len(recovery["qat"]["ranges"]) == 4
    quantize = stages[3]
    assert quantize.name == "3. quantize" and quantize.decision == "applied", quantize.reason
    assert any(c["setting"] == "activation ranges" and "4 from QAT" in str(c["value"])
               for c in quantize.pass_result["choices"])
    scales = _activation_scales(outcome.model)
    for name, (lo, hi) in recovery["qat"]["ranges"].items():
        assert scales[name] == pytest.approx((max(hi, 0.0) - min(lo, 0.0)) / 255, rel=1e-5)
