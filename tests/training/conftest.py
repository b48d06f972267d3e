"""Shared by the recovery tests: a hard-pruned seed CNN (the student) and its top-1 helper."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_compress.data import Dataset
from onnx_compress.model_io import load_model, save_model
from onnx_compress.passes.normalize import Normalize
from onnx_compress.passes.prune.prune_structured_pass import PruneStructured
from onnx_compress.runtime.session import Runner


def top1(model, data: Dataset) -> float:
    runner = Runner(model)
    out = runner.run_dataset(data)[runner.output_names[0]]
    return float((out.argmax(1) == data.labels).mean() * 100)


@pytest.fixture(scope="session")
def pruned_torch_seed(torch_seed_onnx, artifacts) -> Path:
    """The seed PyTorch CNN with 85 % of its channels and neurons cut by L2 norm, no reconstruction
    (a cut that costs several points of top-1: something for recovery to win back)."""
    model = Normalize()(load_model(torch_seed_onnx)).model
    pruned = PruneStructured(ratio=0.85)(model).model
    return save_model(pruned, artifacts / "torch_seed_pruned85.onnx")


@pytest.fixture(scope="session")
def small_splits(digits_nchw):
    """Training/validation/test splits of digits (NCHW) with labels."""
    return {"train": digits_nchw.train, "val": digits_nchw.val, "test": digits_nchw.test}


__all__ = ["top1"]
