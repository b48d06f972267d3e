"""Recovery's edges: an op the bridge cannot train, a loss that turns NaN after a good epoch, and two
processes under torchrun (DistributedDataParallel, gloo) against one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper

from onnx_compress.data import Dataset
from onnx_compress.errors import DataError, UnsupportedModelError
from onnx_compress.model_io import load_model
from onnx_compress.training import losses
from onnx_compress.training.recover import RecoverySettings, recover

from .conftest import top1


def test_an_op_the_bridge_cannot_train_is_refused_by_name_before_training():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], np.eye(3, dtype=np.float32).ravel())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"),
             helper.make_node("Einsum", ["h"], ["y"], name="my_einsum", equation="ij->ij")]
    model = ir.serde.deserialize_model(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                                                         opset_imports=[helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(0)
    train = Dataset(inputs={"x": rng.normal(size=(16, 3)).astype(np.float32)})
    val = Dataset(inputs={"x": rng.normal(size=(8, 3)).astype(np.float32)})
    with pytest.raises(UnsupportedModelError, match=r"my_einsum \(Einsum\)"):
        recover(model, model, train, val, RecoverySettings(epochs=1), progress=False)


def test_matching_encoder_layers_of_a_model_without_them_is_refused_in_one_line():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], np.eye(3, dtype=np.float32).ravel())
    model = ir.serde.deserialize_model(helper.make_model(
        helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")], "g", [x], [y], [w]),
        opset_imports=[helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(0)
    train = Dataset(inputs={"x": rng.normal(size=(16, 3)).astype(np.float32)})
    val = Dataset(inputs={"x": rng.normal(size=(8, 3)).astype(np.float32)})
    with pytest.raises(DataError, match="match 'layers': the student has no encoder layer"):
        recover(model, model, train, val, RecoverySettings(epochs=1, match=("layers",)), progress=False)


def test_a_loss_that_turns_nan_after_a_good_epoch_hands_back_that_epoch(pruned_torch_seed, torch_seed_onnx,
                                                                        small_splits, monkeypatch):
    # a divergence in epoch 2: the training loss of its first step is NaN (validation losses are not touched)
    real_loss = losses.OutputLoss.loss
    steps = {"n": 0}

    def diverging(self, *args, **kwargs):
        value = real_loss(self, *args, **kwargs)
        if torch.is_grad_enabled():
            steps["n"] += 1
            if steps["n"] == 9:  # 256 samples / 32 = 8 steps per epoch
                return value * float("nan")
        return value

    monkeypatch.setattr(losses.OutputLoss, "loss", diverging)
    student = load_model(pruned_torch_seed)
    model, result = recover(student, load_model(torch_seed_onnx), small_splits["train"].take(256),
                            small_splits["val"].take(128), RecoverySettings(epochs=4, lr=3e-3, patience=4),
                            progress=False)
    assert result.stop_reason.startswith("the recovery loss became nan at epoch 2, step 9")
    assert result.improved and result.best_epoch == 1 and result.epochs_run == 1
    assert "best epoch so far" in result.summary()
    assert result.parity < 1e-4 and model is not student
    assert top1(model, small_splits["val"].take(128)) == pytest.approx(result.after)


def _json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])


@pytest.mark.slow
def test_two_processes_under_torchrun_train_as_one(pruned_torch_seed, torch_seed_onnx, small_splits, digits_files,
                                                   tmp_path):
    """torchrun, 2 CPU processes (gloo), 2 x 16 samples per step, against 1 process with 32 per step:
    every step sees the same 32 samples (one shard each), so the two runs differ only by float
    summation order. Tolerance: validation and test top-1 within 1 point (3 of 269/360 images)."""
    train = small_splits["train"].take(512).save(tmp_path / "train.npz")
    val = digits_files["NCHW"]["val"]
    script = Path(sys.executable).parent / "onnx-compress"
    common = [str(pruned_torch_seed), "--teacher", str(torch_seed_onnx), "--data", str(train), "--val", str(val),
              "--epochs", "2", "--lr", "3e-3", "--device", "cpu", "--no-progress", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([str(script), "recover", *common, "-o", str(tmp_path / "one.onnx"), "--batch-size", "32"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--no-python", str(script), "recover", *common, "-o", str(tmp_path / "two.onnx"),
                          "--batch-size", "16"], capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    single, ddp = _json(one.stdout), _json(two.stdout)
    assert single["world_size"] == 1 and ddp["world_size"] == 2
    assert ddp["output"] == str(tmp_path / "two.onnx") and ddp["parity"] < 1e-4  # checked in ONNX Runtime
    assert [r["epoch"] for r in ddp["history"]] == [0, 1, 2]
    for a, b in zip(single["history"], ddp["history"]):
        assert abs(a["metric"] - b["metric"]) <= 1.0, (single["history"], ddp["history"])
    written = load_model(tmp_path / "two.onnx")
    assert [n.op_type for n in written.graph] == [n.op_type for n in load_model(pruned_torch_seed).graph]
    assert abs(top1(written, small_splits["test"]) - top1(load_model(tmp_path / "one.onnx"),
                                                          small_splits["test"])) <= 1.0
    assert ddp["after"] > ddp["before"] + 10  # it did train
