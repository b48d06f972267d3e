"""export a PyTorch / Keras / SavedModel model to ONNX (with a parity check)"""

from __future__ import annotations

import argparse
from pathlib import Path

from onnx_compress.cli.common import Command, arg, command, emit, from_flags
from onnx_compress.errors import ModelLoadError, SettingError


def _parse_shape(text: str) -> tuple[int, ...]:
    """``"1x1x28x28"`` -> ``(1, 1, 28, 28)``."""
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 1x1x28x28, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"shape dimensions must be >= 1, got {text!r}")
    return dims


#: the settings every exporter takes (their flags are generated from the declaration)
_EXPORT = "onnx_compress.converters.settings:ExportSettings"


@command("export torch", """\
a PyTorch nn.Module from FILE.py:NAME

Export a PyTorch model to ONNX (eval mode, a dynamic batch axis) and check that ONNX Runtime reproduces
its outputs at two batch sizes. NAME is a function returning a torch.nn.Module, or an nn.Module class.
WARNING: this imports and runs FILE.py, which is arbitrary Python code: only use files you trust.
--weights loads a state_dict checkpoint first (with torch.load(weights_only=True): it cannot run code).

example:
  onnx-compress export torch samples/seed_torch_cnn.py:SimpleModel --input-shape 1x1x28x28 -o m.onnx
""", (
    arg("source", "Python file and the name of a factory function or nn.Module class in it", metavar="FILE.py:NAME"),
    arg("--input-shape", "example input shape, e.g. 1x1x28x28; once per input", type=_parse_shape, action="append",
        metavar="SHAPE"),
    arg("--input-dtype", "example input dtype (default float32); once per input", action="append", metavar="DTYPE"),
    arg("--weights", "a state_dict checkpoint (.pt) to load, read with weights_only=True", type=Path, metavar="CKPT"),
    arg("-o"),
), settings=(_EXPORT,))
def _export_torch(args: argparse.Namespace) -> int:
    from onnx_compress.converters.torch.export import export_torch
    from onnx_compress.converters.torch.source import example_inputs, load_weights, torch_module

    inputs = example_inputs(args.input_shape, args.input_dtype)  # checked before FILE.py runs
    module = torch_module(args.source, "exporting a PyTorch model")
    if args.weights is not None:
        load_weights(module, args.weights, args.source)
    result = export_torch(module, inputs, args.output, from_flags(args, _EXPORT))
    return emit(args, result.as_dict(), result.table())


def _export_tensorflow(args: argparse.Namespace) -> int:
    """``export keras`` and ``export saved-model`` (``args.framework``): both go through tf2onnx."""
    from onnx_compress.converters.tensorflow.export import export_keras

    source, directory = Path(args.source), args.framework == "saved-model"
    if source.is_dir() and not directory:
        raise SettingError(f"{source} is a directory; use `onnx-compress export saved-model` for SavedModels")
    if directory and not source.is_dir():
        raise ModelLoadError(f"not a SavedModel directory: {source}")
    unsafe = getattr(args, "unsafe_load", False)
    result = export_keras(source, args.output, from_flags(args, _EXPORT), unsafe_load=unsafe)
    return emit(args, result.as_dict(), result.table())


_export_keras = command("export keras", """\
a Keras 3 model saved as .keras

Export a .keras file to ONNX via tf2onnx and check parity in ONNX Runtime. It is loaded with safe_mode:
a Lambda layer (arbitrary code) is refused unless --unsafe-load is given.

example:
  onnx-compress export keras artifacts/keras/seed_cnn.keras -o m.onnx
""", (
    arg("source", "the .keras file", metavar="MODEL.keras"),
    arg("--unsafe-load", "allow layers that run arbitrary code (Lambda); only for trusted files", False),
    arg("-o"),
), settings=(_EXPORT,))(_export_tensorflow)


_export_saved_model = command("export saved-model", """\
a TensorFlow SavedModel directory

Export a SavedModel directory (its serving_default signature, whose input and output names the ONNX model
keeps) to ONNX via tf2onnx, then check parity in ONNX Runtime.

example:
  onnx-compress export saved-model exported_model/ -o m.onnx
""", (arg("source", "the SavedModel directory", metavar="DIR"), arg("-o")), settings=(_EXPORT,))(_export_tensorflow)


COMMANDS = [Command("export", __doc__), _export_torch, _export_keras, _export_saved_model]
