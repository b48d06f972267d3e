"""torchvision-style architectures in plain torch (torchvision itself does not load against the
local torch build), random weights, exported with the TorchScript and the dynamo exporters.

- :class:`ResNetLike`: ResNet-18's layout (stem, four stages of two BasicBlocks with
  downsampling 1x1 shortcuts, BatchNorm, global pool, Linear), width-scalable;
- :class:`MobileNetV2Like`: inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project, ReLU6,
  residual where the shape allows), BatchNorm, classifier with Dropout;
- :class:`FPNDetectorLike`: a small backbone, an FPN (lateral 1x1 convs, nearest upsampling,
  3x3 smoothing) and shared class / box heads over two levels (a RetinaNet-like detector head).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ResNetLike", "MobileNetV2Like", "FPNDetectorLike", "TORCH_ZOO", "export"]


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetLike(nn.Module):
    """ResNet-18 layout at ``width`` base channels (64 in torchvision)."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            layers += [_Basic(cin, cout, 1 if i == 0 else 2), _Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class _Inverted(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Like(nn.Module):
    """MobileNetV2's inverted-residual layout at ``width`` (1.0 = torchvision's widths)."""

    def __init__(self, width: float = 0.5, classes: int = 10) -> None:
        super().__init__()
        def c(n: int) -> int:
            return max(8, int(n * width + 4) // 8 * 8)
        settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 2, 1), (6, 160, 2, 2),
                    (6, 320, 1, 1)]
        layers: list[nn.Module] = [nn.Conv2d(3, c(32), 3, 2, 1, bias=False), nn.BatchNorm2d(c(32)), nn.ReLU6()]
        cin = c(32)
        for t, ch, n, s in settings:
            for i in range(n):
                layers.append(_Inverted(cin, c(ch), s if i == 0 else 1, t))
                cin = c(ch)
        last = c(1280)
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class FPNDetectorLike(nn.Module):
    """Backbone strides 4 / 8 / 16, FPN on the last two levels, shared heads; outputs the
    concatenated class logits and box offsets of both levels (``[N, anchors, classes + 4]``)."""

    def __init__(self, width: int = 16, classes: int = 5) -> None:
        super().__init__()
        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, 1, 1), nn.ReLU())
        self.c2 = nn.Sequential(block(3, width), block(width, width))
        self.c3 = block(width, 2 * width)
        self.c4 = block(2 * width, 4 * width)
        self.lat3 = nn.Conv2d(2 * width, 2 * width, 1)
        self.lat4 = nn.Conv2d(4 * width, 2 * width, 1)
        self.smooth3 = nn.Conv2d(2 * width, 2 * width, 3, 1, 1)
        self.cls = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.ReLU(), nn.Conv2d(2 * width, classes, 3, 1, 1))
        self.box = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.ReLU(), nn.Conv2d(2 * width, 4, 3, 1, 1))
        self.classes = classes

    def _head(self, feature: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.cls(feature), self.box(feature)], dim=1)
        return out.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.c3(self.c2(x))
        c4 = self.c4(c3)
        p4 = self.lat4(c4)
        p3 = self.smooth3(self.lat3(c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest"))
        return torch.cat([self._head(p3), self._head(p4)], dim=1)


#: name -> (builder, input size H = W)
TORCH_ZOO: dict[str, tuple[type[nn.Module], dict, int]] = {
    "resnet18_like": (ResNetLike, {"width": 16}, 64),
    "mobilenetv2_like": (MobileNetV2Like, {"width": 0.5}, 64),
    "fpn_detector_like": (FPNDetectorLike, {"width": 16}, 64),
}


def export(name: str, path: Path, *, dynamo: bool, seed: int = 0) -> Path:
    """Build ``TORCH_ZOO[name]`` with seeded random weights (BatchNorm statistics drawn too, so
    folding them is not a no-op) and export it; checks parity with ONNX Runtime."""
    import onnxruntime as ort

    cls, kwargs, size = TORCH_ZOO[name]
    torch.manual_seed(seed)
    model = cls(**kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    model.eval()
    x = torch.rand(2, 3, size, size)
    dynamic = {"input": {0: "batch"}}
    if dynamo:
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], dynamo=True,
                          external_data=False, dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    else:
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], dynamo=False,
                          opset_version=17, dynamic_axes={**dynamic, "output": {0: "batch"}})
    onnx.checker.check_model(str(path))
    with torch.no_grad():
        want = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    return path
