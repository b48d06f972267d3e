"""Build a narrower student from a plain PyTorch teacher: every Conv/Linear width times a factor.

What "plain" means
    A module whose ``forward``, traced by ``torch.fx``, is one straight chain: every step takes
    the previous step's output as its only tensor input, and every step is one of

    - a width layer: ``nn.Conv1d/2d/3d`` (``groups=1``) or ``nn.Linear``;
    - a layer that follows the width: ``nn.BatchNorm1d/2d/3d``, ``nn.LayerNorm`` over the
      features of a ``Linear``;
    - a step that does not care about the width: activations, pooling, dropout, softmax and
      ``flatten(start_dim=1)`` — as modules (``nn.ReLU``, ``nn.MaxPool2d``, ``nn.Flatten``...)
      or as calls (``F.relu``, ``F.max_pool2d``, ``torch.flatten``, ``x.flatten(1)``...).

    Every ``nn.Sequential`` of such layers is plain, and so is a module written with ``F.*``
    calls in ``forward`` like the seed CNN (``samples/seed_torch_cnn.py``). Refused, with the
    step named and the reason: branches and skip connections (a value used twice), a layer called
    twice, grouped or transposed convolutions, embeddings, recurrent layers, attention, direct
    use of parameters, ``x.view(x.size(0), -1)`` (the size is read from the tensor: use
    ``torch.flatten(x, 1)``), data-dependent control flow (``torch.fx`` cannot trace it), and
    any other module or function.

How
    The student is a deep copy of the teacher in which every width layer and every following
    norm is replaced by a freshly initialised one of the new size (the teacher's class, its
    ``forward`` and its stateless modules are kept). A width layer with ``c`` output channels or
    features gets ``max(1, round(c * factor))``, except the last one, which keeps the teacher's
    output size; the first keeps the teacher's input channels. A ``Linear`` after
    ``flatten(start_dim=1)`` of ``c`` channels of ``s`` positions takes ``s * c'`` inputs.
    The new layers are initialised by their own ``reset_parameters`` from torch's global random
    generator: call ``torch.manual_seed`` first for a reproducible student. Given
    ``example_input``, teacher and student are run and must produce outputs of the same shape.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any

from onnx_compress.errors import SettingError, UnsupportedModelError, one_line
from onnx_compress.optional import require

__all__ = ["narrow_student", "NarrowedLayer"]

logger = logging.getLogger(__name__)

_ACTIVATION_FUNCTIONS = (
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "hardtanh", "softplus", "softmax", "log_softmax", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
)
_TORCH_FUNCTIONS = ("relu", "sigmoid", "tanh", "softmax", "log_softmax")
_METHODS = ("relu", "sigmoid", "tanh", "softmax", "log_softmax")
_ACTIVATION_MODULES = (
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Sigmoid", "Tanh",
    "Hardswish", "Hardsigmoid", "Hardtanh", "Softplus", "Softmax", "LogSoftmax", "Identity",
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
)


@dataclasses.dataclass(frozen=True)
class NarrowedLayer:
    """One replaced layer: its qualified name, type, and (in, out) widths before and after."""

    name: str
    kind: str
    before: tuple[int, int]
    after: tuple[int, int]


@dataclasses.dataclass
class _Width:
    """The channel/feature width flowing along the chain.

    ``old``/``new``: the teacher's and the student's width (``None`` before the first width
    layer: the network input, kept). ``layout``: ``channels`` (axis 1 of a conv activation),
    ``features`` (the last axis of a 2-D activation). ``flat``: a flatten merged the channels
    with the positions, so a feature count is a multiple of ``old``.
    """

    old: int | None = None
    new: int | None = None
    layout: str = "input"
    flat: bool = False

    def scale_features(self, count: int, step: str) -> int:
        """The student's size of a feature axis of ``count`` in the teacher."""
        if self.old is None or self.new is None:
            return count
        if self.flat:
            if count % self.old:
                raise UnsupportedModelError(
                    f"{step}: {count} features after flatten are not a multiple of the {self.old} channels before it"
                )
            return count // self.old * self.new
        if count != self.old:
            raise UnsupportedModelError(f"{step}: expects {count} features, the previous layer gives {self.old}")
        return self.new


def _scaled(width: int, factor: float) -> int:
    return max(1, int(round(width * factor)))


def _is_chain_input(node: Any, previous: Any) -> None:
    """The node's only tensor input must be the previous node."""
    inputs = list(node.all_input_nodes)
    if inputs != [previous]:
        names = ", ".join(n.name for n in inputs) or "no tensor"
        raise UnsupportedModelError(
            f"step {node.name!r} takes {names} as input, not just the previous step "
            f"({previous.name!r}): only straight chains are narrowed (no branches or skip connections)"
        )
    if len(previous.users) != 1:
        users = ", ".join(u.name for u in previous.users)
        hint = ""
        if any(u.op == "call_method" and u.target == "size" for u in previous.users):
            hint = "; x.view(x.size(0), -1) reads the size from the tensor: use torch.flatten(x, 1)"
        raise UnsupportedModelError(
            f"the output of {previous.name!r} is used by several steps ({users}): only straight chains "
            f"are narrowed (no branches or skip connections){hint}"
        )


def _flatten_start(node: Any) -> int:
    """``start_dim`` of a flatten call (torch.flatten defaults to 0, Tensor.flatten too)."""
    if len(node.args) > 1:
        return int(node.args[1])
    return int(node.kwargs.get("start_dim", 0))


def _check_flatten(start_dim: int, end_dim: int, step: str, width: _Width) -> None:
    if start_dim != 1 or end_dim != -1:
        raise UnsupportedModelError(
            f"{step}: flatten(start_dim={start_dim}, end_dim={end_dim}) is not supported; only "
            "flatten(start_dim=1) (all but the batch axis)"
        )
    if width.layout == "channels":
        width.flat = True
    width.layout = "features"


def narrow_student(teacher: Any, factor: float = 0.5, *, example_input: Any = None) -> Any:
    """A freshly initialised copy of a plain ``teacher`` with every Conv/Linear width scaled.

    Args:
        teacher: a plain ``torch.nn.Module`` (see the module docstring); it is not modified.
        factor: the width multiplier (> 0), e.g. 0.5 for a half-width student.
        example_input: an input tensor; when given, teacher and student are run on it and must
            give outputs of the same shape.

    Returns:
        The student: same class and ``forward`` as the teacher, narrower layers, new weights.
        ``student.narrowed_layers`` lists what was replaced (:class:`NarrowedLayer`).

    Raises:
        SettingError: ``factor`` is not a positive number.
        UnsupportedModelError: the teacher is not plain; the message names the step and why.
    """
    torch = require("torch", "building a narrow PyTorch student")
    fx = require("torch.fx", "building a narrow PyTorch student")

    nn = torch.nn
    functional = torch.nn.functional
    if not isinstance(teacher, nn.Module):
        raise SettingError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise SettingError(f"factor must be a number > 0 (e.g. 0.5 for half width), got {factor!r}")
    try:
        traced = fx.symbolic_trace(teacher)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{type(teacher).__name__}.forward could not be traced by torch.fx "
            f"({type(exc).__name__}: {one_line(exc)}); only plain chains of layers are narrowed"
        ) from exc

    activation_functions = {getattr(functional, name) for name in _ACTIVATION_FUNCTIONS if hasattr(functional, name)}
    activation_functions |= {getattr(torch, name) for name in _TORCH_FUNCTIONS}
    activation_modules = tuple(getattr(nn, name) for name in _ACTIVATION_MODULES if hasattr(nn, name))
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

    nodes = list(traced.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModelError(
            f"{type(teacher).__name__}.forward takes {len(placeholders)} inputs; only one-input chains are narrowed"
        )
    steps = [n for n in nodes if n.op not in ("placeholder", "output")]
    width_steps = [n for n in steps if n.op == "call_module" and type(traced.get_submodule(n.target)) in (*convs, nn.Linear)]
    last_width = width_steps[-1] if width_steps else None

    width = _Width()
    replacements: dict[str, Any] = {}
    report: list[NarrowedLayer] = []
    called: set[str] = set()
    previous = placeholders[0]
    for node in steps:
        step = f"step {node.name!r}"
        if node.op == "get_attr":
            raise UnsupportedModelError(f"{step} reads the tensor {node.target!r} directly; only layers and activations are supported")
        _is_chain_input(node, previous)
        previous = node
        if node.op == "call_function":
            if node.target is torch.flatten:
                _check_flatten(_flatten_start(node), int(node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)), step, width)
            elif node.target not in activation_functions:
                raise UnsupportedModelError(
                    f"{step} calls {getattr(node.target, '__name__', node.target)}, which narrow_student "
                    "does not support (it may depend on the width)"
                )
            continue
        if node.op == "call_method":
            if node.target == "flatten":
                _check_flatten(_flatten_start(node), int(node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)), step, width)
            elif node.target not in _METHODS:
                raise UnsupportedModelError(
                    f"{step} calls tensor.{node.target}(), which narrow_student does not support"
                    + ("; use torch.flatten(x, 1) instead of x.view(x.size(0), -1)" if node.target in ("view", "reshape", "size") else "")
                )
            continue
        # call_module
        name = str(node.target)
        if name in called:
            raise UnsupportedModelError(f"layer {name!r} is called more than once; its width would be shared")
        called.add(name)
        module = traced.get_submodule(name)
        kind = type(module)
        step = f"layer {name!r} ({kind.__name__})"
        if kind in convs:
            if module.groups != 1:
                raise UnsupportedModelError(f"{step} has groups={module.groups}: grouped/depthwise convolutions are not narrowed")
            if width.layout == "features":
                raise UnsupportedModelError(f"{step} follows a flatten or a Linear layer; only conv stacks before them are narrowed")
            if width.old is not None and module.in_channels != width.old:
                raise UnsupportedModelError(f"{step} expects {module.in_channels} channels, the previous layer gives {width.old}")
            new_in = module.in_channels if width.new is None else width.new
            new_out = module.out_channels if node is last_width else _scaled(module.out_channels, factor)
            replacement = kind(new_in, new_out, kernel_size=module.kernel_size, stride=module.stride,
                               padding=module.padding, dilation=module.dilation, groups=1,
                               bias=module.bias is not None, padding_mode=module.padding_mode,
                               device=module.weight.device, dtype=module.weight.dtype)
            report.append(NarrowedLayer(name, kind.__name__, (module.in_channels, module.out_channels), (new_in, new_out)))
            width = _Width(old=module.out_channels, new=new_out, layout="channels")
        elif kind is nn.Linear:
            if width.layout == "channels":
                raise UnsupportedModelError(
                    f"{step} is applied to a conv output without flatten (it would act on the last spatial axis)"
                )
            new_in = width.scale_features(module.in_features, step)
            new_out = module.out_features if node is last_width else _scaled(module.out_features, factor)
            replacement = nn.Linear(new_in, new_out, bias=module.bias is not None,
                                    device=module.weight.device, dtype=module.weight.dtype)
            report.append(NarrowedLayer(name, "Linear", (module.in_features, module.out_features), (new_in, new_out)))
            width = _Width(old=module.out_features, new=new_out, layout="features")
        elif kind in norms:
            size = width.scale_features(module.num_features, step) if width.layout == "features" else (
                module.num_features if width.old is None else width.new)
            if width.layout == "channels" and module.num_features != width.old:
                raise UnsupportedModelError(f"{step} normalizes {module.num_features} channels, the previous layer gives {width.old}")
            replacement = kind(size, eps=module.eps, momentum=module.momentum, affine=module.affine,
                               track_running_stats=module.track_running_stats)
            report.append(NarrowedLayer(name, kind.__name__, (module.num_features, module.num_features), (size, size)))
        elif kind is nn.LayerNorm:
            shape = tuple(module.normalized_shape)
            if width.layout != "features" or len(shape) != 1 or width.flat:
                raise UnsupportedModelError(
                    f"{step} normalizes over {shape}; only a LayerNorm over the features of a Linear layer is narrowed"
                )
            size = width.scale_features(shape[0], step)
            replacement = nn.LayerNorm(size, eps=module.eps, elementwise_affine=module.elementwise_affine,
                                       bias=getattr(module, "bias", None) is not None)
            report.append(NarrowedLayer(name, "LayerNorm", (shape[0], shape[0]), (size, size)))
        elif kind is nn.Flatten:
            _check_flatten(module.start_dim, module.end_dim, step, width)
            continue
        elif isinstance(module, activation_modules) and kind in activation_modules:
            if any(True for _ in module.parameters()):
                raise UnsupportedModelError(f"{step} has parameters; it is not width-independent")
            continue
        else:
            raise UnsupportedModelError(
                f"{step} is not supported by narrow_student (supported: Conv1d/2d/3d, Linear, BatchNorm, "
                "LayerNorm, activations, pooling, dropout, flatten)"
            )
        replacements[name] = replacement
    if last_width is None:
        raise UnsupportedModelError(f"{type(teacher).__name__} has no Conv or Linear layer to narrow")

    student = copy.deepcopy(teacher)
    for name, replacement in replacements.items():
        student.set_submodule(name, replacement)
    student.narrowed_layers = report
    if example_input is not None:
        _check_shapes(teacher, student, example_input, torch)
    logger.info("narrow student (factor %g): %s", factor,
                ", ".join(f"{r.name} {r.before[1]}->{r.after[1]}" for r in report if r.kind != "LayerNorm"))
    return student


def _check_shapes(teacher: Any, student: Any, example_input: Any, torch: Any) -> None:
    from onnx_compress.converters.torch.export import _eval_mode

    with _eval_mode(teacher), _eval_mode(student), torch.no_grad():
        expected = teacher(example_input)
        try:
            got = student(example_input)
        except Exception as exc:
            raise UnsupportedModelError(
                f"the narrowed student fails on the example input ({type(exc).__name__}: {one_line(exc)}); "
                "its forward probably depends on the layer widths"
            ) from exc
    if tuple(got.shape) != tuple(expected.shape):
        raise UnsupportedModelError(
            f"the narrowed student outputs shape {tuple(got.shape)}, the teacher {tuple(expected.shape)}"
        )
