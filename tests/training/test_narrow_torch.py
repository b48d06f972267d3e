"""narrow_student for PyTorch: expected widths on plain chains, refusals with reasons."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from onnx_compress.training.narrow.torch import narrow_student
from onnx_compress.errors import SettingError, UnsupportedModelError


def _widths(module: nn.Module) -> list[tuple[str, int, int]]:
    out = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            out.append((name, sub.in_channels, sub.out_channels))
        elif isinstance(sub, nn.Linear):
            out.append((name, sub.in_features, sub.out_features))
    return out


def test_seed_cnn_written_with_functional_calls_is_plain():
    from onnx_compress.samples import seed_torch_cnn

    teacher = seed_torch_cnn.SimpleModel()
    student = narrow_student(teacher, 0.5, example_input=torch.zeros(2, 1, 28, 28))
    assert type(student) is type(teacher)
    assert _widths(student) == [("conv1", 1, 16), ("conv2", 16, 32), ("fc1", 32 * 5 * 5, 64), ("fc2", 64, 10)]
    assert _widths(teacher) == [("conv1", 1, 32), ("conv2", 32, 64), ("fc1", 64 * 5 * 5, 128), ("fc2", 128, 10)]
    assert [layer.name for layer in student.narrowed_layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert not any(p is q for p in student.parameters() for q in teacher.parameters())
    out = student(torch.zeros(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.allclose(out.exp().sum(1), torch.ones(3))  # still log_softmax


def test_sequential_with_norms_pooling_and_rounding():
    teacher = nn.Sequential(
        nn.Conv2d(3, 24, 3), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(24, 48, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(48 * 4, 100), nn.LayerNorm(100), nn.GELU(), nn.Dropout(0.1), nn.Linear(100, 7),
    )
    student = narrow_student(teacher, 0.3, example_input=torch.zeros(2, 3, 12, 12))
    assert _widths(student) == [("0", 3, 7), ("4", 7, 14), ("8", 14 * 4, 30), ("12", 30, 7)]
    assert student[1].num_features == 7 and student[9].normalized_shape == (30,)
    assert isinstance(student, nn.Sequential) and student(torch.zeros(1, 3, 12, 12)).shape == (1, 7)
    mlp = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3))
    assert _widths(narrow_student(mlp, 0.25)) == [("0", 16, 16), ("2", 16, 16), ("4", 16, 3)]


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x + F.relu(self.a(x)))


class _View(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fc(x.view(x.size(0), -1))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return self.fc(x)
        return -self.fc(x)


@pytest.mark.parametrize(
    ("teacher", "reason"),
    [
        (_Residual(), "used by several steps"),
        (_View(), r"use torch.flatten\(x, 1\)"),
        (_Branchy(), "could not be traced by torch.fx"),
        (nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), r"'0' \(Embedding\) is not supported"),
        (nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8, 2)), "groups=2"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 2)), "without flatten"),
        (nn.Sequential(nn.LSTM(4, 8)), r"\(LSTM\) is not supported"),
        (nn.Sequential(nn.ReLU()), "no Conv or Linear"),
    ],
)
def test_unsupported_modules_are_refused_with_a_reason(teacher, reason):
    with pytest.raises(UnsupportedModelError, match=reason):
        narrow_student(teacher, 0.5)


def test_shared_layer_and_bad_factor():
    layer = nn.Linear(4, 4)
    with pytest.raises(UnsupportedModelError, match="called more than once"):
        narrow_student(nn.Sequential(layer, nn.ReLU(), layer), 0.5)
    for factor in (0, -1, float("nan"), "half"):
        with pytest.raises(SettingError, match="factor"):
            narrow_student(nn.Sequential(nn.Linear(4, 2)), factor)  # type: ignore[arg-type]
