"""PyTorch export: parity at two batch sizes, names, training flags, clean failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import onnx_compress as oc
from onnx_compress.converters.parity import check_parity
from onnx_compress.errors import ExportError, ParityError, SettingError
from onnx_compress.runtime import Runner, SessionSettings


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return Runner(path, SessionSettings(provider="cpu")).run(feeds)


@pytest.mark.parametrize("batch", [1, 7])
def test_seed_cnn_parity_at_batch(torch_seed, torch_seed_onnx, digits_nchw, batch):
    x = digits_nchw.test.take(batch).inputs["input"]
    with torch.no_grad():
        expected = torch_seed(torch.from_numpy(x)).numpy()
    (got,) = _ort(torch_seed_onnx, {"input": x})
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_export_names_batch_axis_and_report(torch_seed, digits_nchw, tmp_path):
    path = tmp_path / "m.onnx"
    result = oc.export_torch(torch_seed, torch.from_numpy(digits_nchw.test.take(2).inputs["input"]), path,
                             input_names=["pixels"], output_names=["log_probs"])
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["log_probs"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {c.batch for c in result.parity} == {2, 3}
    assert result.max_abs_error < 1e-4
    assert result.opset == 18 and not result.external_data
    assert not (tmp_path / "m.onnx.data").exists()  # weights inline below 2 GB


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(8, 4)
        self.dropout = nn.Dropout(0.5)

    def forward(self, token_ids: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.dropout(self.embed(token_ids)).mean(dim=1) * scale
        return {"logits": self.proj(hidden), "hidden": hidden}


def test_multi_input_dict_output_and_training_flags_restored(tmp_path):
    module = _TwoInputs()
    module.train()
    module.dropout.eval()  # a submodule with its own flag must keep it
    ids = torch.randint(0, 50, (2, 5))
    scale = torch.rand(2, 1)
    result = oc.export_torch(module, (ids, scale), tmp_path / "two.onnx")
    assert result.input_names == ["token_ids", "scale"]
    assert result.output_names == ["logits", "hidden"]
    assert module.training and module.embed.training and not module.dropout.training
    # dropout was off during export: ONNX output equals the eval-mode module
    module.eval()
    ids7, scale7 = torch.randint(0, 50, (7, 5)), torch.rand(7, 1)
    with torch.no_grad():
        expected = module(ids7, scale7)
    logits, hidden = _ort(tmp_path / "two.onnx", {"token_ids": ids7.numpy(), "scale": scale7.numpy()})
    np.testing.assert_allclose(logits, expected["logits"].numpy(), atol=1e-5)
    np.testing.assert_allclose(hidden, expected["hidden"].numpy(), atol=1e-5)


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return x * 2
        return x


def test_failed_export_leaves_nothing_on_disk(tmp_path):
    module = _DataDependent()
    module.train()
    with pytest.raises(ExportError, match="torch.onnx.export failed"):
        oc.export_torch(module, torch.ones(1, 3), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []
    assert module.training  # restored even on failure


def test_parity_error_names_the_output_and_the_error(torch_seed_onnx, digits_nchw, torch_seed):
    x = digits_nchw.test.take(3).inputs["input"]
    with torch.no_grad():
        expected = torch_seed(torch.from_numpy(x)).numpy()
    check = check_parity(torch_seed_onnx, {"input": x}, [expected], atol=1e-4, rtol=1e-4)
    assert check.batch == 3 and check.worst < 1e-4
    with pytest.raises(ParityError, match=r"output 'output' at batch 3 differs by up to 0\.5"):
        check_parity(torch_seed_onnx, {"input": x}, [expected + 0.5], atol=1e-4, rtol=0.0)


def test_bad_arguments_are_setting_errors(torch_seed, tmp_path):
    with pytest.raises(SettingError, match="example_inputs"):
        oc.export_torch(torch_seed, "not a tensor", tmp_path / "m.onnx")
    with pytest.raises(SettingError, match="opset"):
        oc.export_torch(torch_seed, torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx", opset=13)
    with pytest.raises(SettingError, match="input_names"):
        oc.export_torch(torch_seed, torch.zeros(1, 1, 28, 28), tmp_path / "m.onnx", input_names=["a", "b"])
    assert list(tmp_path.iterdir()) == []
