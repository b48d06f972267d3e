"""Export a PyTorch ``nn.Module`` to ONNX, then prove parity in ONNX Runtime.

How
    ``torch.onnx.export`` with the dynamo exporter (``torch.export`` + onnxscript), which is the
    exporter PyTorch maintains. The batch axis (axis 0 of every input) is dynamic by default
    (one shared ``torch.export.Dim`` named ``batch``); inputs and outputs get explicit names.
    The default opset, 18 (:data:`~onnx_compress.converters.settings.TORCH_OPSET`), is the newest
    that every tool downstream handles (ONNX Runtime's quantizer and tf2onnx both support it).

Training mode
    The module is exported in eval mode (dropout off, batch norm on running statistics) and
    every submodule's own ``training`` flag is restored afterwards, also on failure: a module
    that was training keeps training.

Weights
    Stored inline when the parameters take less than 1.8 GB, as one external data file
    (``NAME.onnx.data``) otherwise.

Safety
    The export is staged in a temporary folder beside the output and only moved into place
    after the parity check passed, so a failed export leaves nothing on disk.

Names (when not given)
    One input is called ``input``; several take the names of ``forward``'s parameters. One
    output is called ``output``; several are ``output_0``, ``output_1``... or the keys of a
    returned dict.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.converters.parity import ExportResult, ParityCheck, check_parity
from onnx_compress.converters.settings import TORCH_OPSET, ExportSettings
from onnx_compress.errors import one_line, ExportError, SettingError
from onnx_compress.model_io import EXTERNAL_DATA_THRESHOLD_BYTES, staged_output
from onnx_compress.optional import require
from onnx_compress.runtime.session import Runner, SessionSettings
from onnx_compress.setting import overridden

__all__ = ["export_torch", "DEFAULT_OPSET"]

logger = logging.getLogger(__name__)

#: the default opset (declared in :mod:`onnx_compress.converters.settings`)
DEFAULT_OPSET = TORCH_OPSET
#: the second batch size the dynamic-batch parity check runs at
_SECOND_BATCH = 3


def _as_tuple(example_inputs: Any, torch: Any) -> tuple[Any, ...]:
    items = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    converted = []
    for item in items:
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if not isinstance(item, torch.Tensor):
            raise SettingError(
                f"example_inputs must be tensors or numpy arrays, got {type(item).__name__}"
            )
        converted.append(item)
    if not converted:
        raise SettingError("example_inputs is empty: give at least one example tensor")
    return tuple(converted)


def _default_input_names(module: Any, count: int) -> list[str]:
    if count == 1:
        return ["input"]
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


def _flatten_outputs(outputs: Any, torch: Any) -> tuple[list[Any], list[str] | None]:
    """Framework outputs as a flat list of tensors, and names when the module returned a dict."""
    if isinstance(outputs, torch.Tensor):
        return [outputs], None
    if isinstance(outputs, Mapping):
        return list(outputs.values()), [str(k) for k in outputs]
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return list(outputs), None
    raise ExportError(
        f"the module returned {type(outputs).__name__}; export needs a tensor, a tuple/list of "
        "tensors or a dict of tensors"
    )


@contextlib.contextmanager
def _eval_mode(module: Any):
    """Put the module in eval mode; restore every submodule's own training flag afterwards."""
    flags = {name: sub.training for name, sub in module.named_modules()}
    module.eval()
    try:
        yield
    finally:
        for name, sub in module.named_modules():
            if name in flags:
                sub.training = flags[name]


@contextlib.contextmanager
def _quiet_registry():
    """The exporter warns that torchvision ops are skipped when torchvision is absent; that is
    irrelevant to models without torchvision ops, so those warnings are kept out of the way."""
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        registry_logger.setLevel(level)


def _second_batch(inputs: tuple[Any, ...], torch: Any) -> tuple[Any, ...]:
    """Inputs at another batch size: the example repeated, floats perturbed so rows differ."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for tensor in inputs:
        reps = [(_SECOND_BATCH + tensor.shape[0] - 1) // tensor.shape[0]] + [1] * (tensor.dim() - 1)
        tiled = tensor.repeat(*reps)[:_SECOND_BATCH]
        if tiled.is_floating_point():
            noise = torch.randn(tiled.shape, generator=generator, dtype=tiled.dtype)
            tiled = tiled + 0.01 * noise * (tiled.abs().mean() + 1e-3)
        out.append(tiled)
    return tuple(out)


def _run_module(module: Any, inputs: tuple[Any, ...], torch: Any) -> list[np.ndarray]:
    with torch.no_grad():
        outputs, _ = _flatten_outputs(module(*inputs), torch)
    return [o.detach().cpu().numpy() for o in outputs]


def _dynamic_shapes(
    torch: Any, names: Sequence[str], dynamic_batch: bool, axes: Mapping[str, Mapping[int, str]]
) -> tuple[dict[int, Any], ...] | None:
    """torch.export dynamic shapes: axis 0 named ``batch`` (if dynamic) plus the named axes."""
    unknown = sorted(set(axes) - set(names))
    if unknown:
        raise SettingError(f"dynamic_axes names unknown inputs {unknown}; inputs: {list(names)}")
    dims: dict[str, Any] = {}

    def dim(name: str) -> Any:
        if name not in dims:
            dims[name] = torch.export.Dim(name, min=1)
        return dims[name]

    shapes = []
    for name in names:
        spec = {0: dim("batch")} if dynamic_batch else {}
        spec.update({int(axis): dim(dim_name) for axis, dim_name in axes.get(name, {}).items()})
        shapes.append(spec)
    return tuple(shapes) if any(shapes) else None


def _name_outputs(path: Path, names: Sequence[str]) -> None:
    """Give the exported graph outputs their names.

    Done on the ONNX graph rather than by the exporter: the exporter fails when a requested
    name is already used by an internal value (e.g. ``embedding`` inside a BERT), while here the
    internal value is renamed out of the way first.
    """
    model = ir.load(path)
    outputs = list(model.graph.outputs)
    if [v.name for v in outputs] == list(names):
        return
    wanted = set(names)
    for node in model.graph:
        for value in node.outputs:
            if value.name in wanted and value not in outputs:
                value.name = f"{value.name}__internal"
    for value in model.graph.inputs:
        if value.name in wanted:
            raise SettingError(f"output name {value.name!r} is already an input name")
    for value, name in zip(outputs, names):
        value.name = name
    ir.save(model, path, external_data=path.name + ".data" if _has_external_data(model) else None)


def _has_external_data(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def _param_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers()
    )


def export_torch(module: Any, example_inputs: Any, path: str | os.PathLike[str], settings: ExportSettings | None = None,
                 *, dynamic_axes: Mapping[str, Mapping[int, str]] | None = None, **overrides: Any) -> ExportResult:
    """Export ``module`` to ONNX at ``path`` and check parity in ONNX Runtime.

    Args:
        module: a ``torch.nn.Module``.
        example_inputs: a tensor (or numpy array) or a tuple of them, batch axis first.
        path: the output ``.onnx`` file; its folder must exist.
        settings: names (see the module docstring for the defaults), opset (default
            :data:`TORCH_OPSET`; >= 18 for the dynamo exporter), dynamic batch axis (axis 0 of every
            input, checked at a second batch size) and parity tolerance: an
            :class:`~onnx_compress.converters.settings.ExportSettings`; ``**overrides`` sets single
            ones on top of it (``opset=18, input_names=["x"]``).
        dynamic_axes: more dynamic axes, by input name: ``{"input_ids": {1: "sequence"}}``;
            axes with the same name share one dimension.

    Raises:
        ExportError: the exporter failed. ParityError: ONNX Runtime disagrees with PyTorch.
    """
    settings = overridden(settings or ExportSettings(), overrides, where="export_torch()")
    opset, dynamic_batch = settings.opset or TORCH_OPSET, settings.dynamic_batch
    atol, rtol = settings.atol, settings.rtol
    torch = require("torch", "exporting a PyTorch model")
    require("onnxscript", "the PyTorch ONNX exporter")
    if not isinstance(module, torch.nn.Module):
        raise SettingError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if opset < 18:
        raise SettingError(f"opset must be >= 18 for the PyTorch dynamo exporter, got {opset}")
    inputs = _as_tuple(example_inputs, torch)
    names_in = list(settings.input_names or ()) or _default_input_names(module, len(inputs))
    if len(names_in) != len(inputs):
        raise SettingError(f"{len(names_in)} input_names given for {len(inputs)} example inputs")

    with _eval_mode(module):
        try:
            with torch.no_grad():
                raw_outputs = module(*inputs)
        except Exception as exc:
            raise ExportError(
                f"the module failed on the example inputs ({type(exc).__name__}: {one_line(exc)}); "
                "check the input shape"
            ) from exc
        outputs, dict_names = _flatten_outputs(raw_outputs, torch)
        expected = [o.detach().cpu().numpy() for o in outputs]
        if settings.output_names:
            names_out = list(settings.output_names)
        elif dict_names:
            names_out = dict_names
        else:
            names_out = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
        if len(names_out) != len(outputs):
            raise SettingError(f"{len(names_out)} output_names given for {len(outputs)} outputs")

        dynamic_shapes = _dynamic_shapes(torch, names_in, dynamic_batch, dynamic_axes or {})
        external = _param_bytes(module) > EXTERNAL_DATA_THRESHOLD_BYTES

        with staged_output(path) as staged:
            captured = io.StringIO()
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(captured), _quiet_registry():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        module,
                        inputs,
                        str(staged),
                        input_names=names_in,
                        opset_version=opset,
                        dynamic_shapes=dynamic_shapes,
                        external_data=external,
                        dynamo=True,
                        optimize=True,
                    )
            except Exception as exc:
                logger.debug("exporter output:\n%s", captured.getvalue())
                raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {one_line(exc)}") from exc
            logger.debug("exporter output:\n%s", captured.getvalue())
            _name_outputs(staged, names_out)

            runner = Runner(staged, SessionSettings(provider="cpu"))
            feeds = {name: t.detach().cpu().numpy() for name, t in zip(names_in, inputs)}
            checks: list[ParityCheck] = [check_parity(staged, feeds, expected, atol=atol, rtol=rtol, runner=runner)]
            if dynamic_batch:
                second = _second_batch(inputs, torch)
                checks.append(
                    check_parity(
                        staged,
                        {name: t.numpy() for name, t in zip(names_in, second)},
                        _run_module(module, second, torch),
                        atol=atol,
                        rtol=rtol,
                        runner=runner,
                    )
                )
            del runner
    result = ExportResult(
        path=Path(path),
        input_names=names_in,
        output_names=names_out,
        opset=opset,
        external_data=external,
        parity=checks,
    )
    logger.info("exported %s (max abs error %.3g)", path, result.max_abs_error)
    return result

