"""``onnx-compress export {torch,keras,saved-model}``: framework model -> ONNX with a parity check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import add_command, add_json_flag, emit, parse_shape
from onnx_compress.errors import ModelLoadError, SettingError

__all__ = ["register"]

_TORCH_DESCRIPTION = """\
Export a PyTorch model to ONNX, then check that ONNX Runtime reproduces its outputs.

SOURCE is FILE.py:NAME, where NAME is a function returning a torch.nn.Module or an
nn.Module class constructible without arguments. WARNING: this imports and runs FILE.py,
which is arbitrary Python code: only use files you trust.

The module is exported in eval mode with a dynamic batch axis; parity with PyTorch is checked
at the example batch size and at a second batch size. With --weights, a state_dict checkpoint
is loaded first (with torch.load(weights_only=True), so it cannot run code).

example:
  onnx-compress export torch samples/seed_torch_cnn.py:SimpleModel --input-shape 1x1x28x28 -o m.onnx
"""

_KERAS_DESCRIPTION = """\
Export a Keras 3 model saved as a .keras file to ONNX (via tf2onnx), then check parity in
ONNX Runtime. The file is loaded with safe_mode=True: a Lambda layer (arbitrary code) is
refused unless --unsafe-load is given.

example:
  onnx-compress export keras artifacts/keras/seed_cnn.keras -o m.onnx
"""

_SAVED_MODEL_DESCRIPTION = """\
Export a TensorFlow SavedModel directory (its serving_default signature) to ONNX via tf2onnx,
then check parity in ONNX Runtime. Input and output names are the signature's.

example:
  onnx-compress export saved-model exported_model/ -o m.onnx
"""


def _export_torch(args: argparse.Namespace) -> int:
    from onnx_compress.converters.torch.export import export_torch
    from onnx_compress.converters.torch.source import example_inputs, load_weights, torch_module

    if not args.input_shape:
        raise SettingError("--input-shape is required (e.g. --input-shape 1x1x28x28), once per input")
    dtypes = args.input_dtype or ["float32"] * len(args.input_shape)
    if len(dtypes) != len(args.input_shape):
        raise SettingError("give one --input-dtype per --input-shape, or none")
    module = torch_module(args.source, "exporting a PyTorch model")
    if args.weights is not None:
        load_weights(module, args.weights, args.source)
    examples = example_inputs(args.input_shape, dtypes)
    result = export_torch(module, examples, args.output, opset=args.opset or 18, **_common(args))
    emit(args, result.as_dict(), result.table())
    return 0


def _export_keras(args: argparse.Namespace) -> int:
    from onnx_compress.converters.tensorflow.export import export_keras

    source = Path(args.source)
    if args.framework == "keras" and source.is_dir():
        raise SettingError(f"{source} is a directory; use `onnx-compress export saved-model` for SavedModels")
    if args.framework == "saved-model" and not source.is_dir():
        raise ModelLoadError(f"not a SavedModel directory: {source}")
    result = export_keras(source, args.output, opset=args.opset or 17, unsafe_load=getattr(args, "unsafe_load", False),
                          **_common(args))
    emit(args, result.as_dict(), result.table())
    return 0


def _common(args: argparse.Namespace) -> dict[str, Any]:
    """The export settings every framework takes, from the flags of :func:`_add_common`."""
    return {"input_names": args.input_names, "output_names": args.output_names,
            "dynamic_batch": not args.static_batch, "atol": args.atol, "rtol": args.rtol}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, required=True, help="the ONNX file to write")
    parser.add_argument("--input-names", nargs="+", metavar="NAME",
                        help="ONNX input names (default: 'input' for one input)")
    parser.add_argument("--output-names", nargs="+", metavar="NAME",
                        help="ONNX output names (default: 'output' for one output)")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default: 18 for torch, 17 for keras/saved-model)")
    parser.add_argument("--static-batch", action="store_true",
                        help="keep the example's batch size fixed instead of a dynamic batch axis")
    parser.add_argument("--atol", type=float, default=1e-4, help="parity: absolute tolerance (default 1e-4)")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="parity: tolerance relative to the largest output magnitude (default 1e-4)")
    add_json_flag(parser)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export", help="export a PyTorch / Keras / SavedModel model to ONNX (with a parity check)",
        description="Export a framework model to ONNX and check parity in ONNX Runtime.",
    )
    frameworks = parser.add_subparsers(dest="framework", metavar="FRAMEWORK")
    frameworks.required = True

    torch_parser = add_command(frameworks, "torch", help="a PyTorch nn.Module from FILE.py:NAME",
                               description=_TORCH_DESCRIPTION, handler=_export_torch)
    torch_parser.add_argument("source", metavar="FILE.py:NAME",
                              help="Python file and the name of a factory function or nn.Module class in it")
    torch_parser.add_argument("--input-shape", type=parse_shape, action="append", metavar="SHAPE",
                              help="example input shape, e.g. 1x1x28x28; repeat once per input")
    torch_parser.add_argument("--input-dtype", action="append", metavar="DTYPE",
                              help="example input dtype (default float32); repeat once per input")
    torch_parser.add_argument("--weights", type=Path, default=None, metavar="CKPT",
                              help="a state_dict checkpoint (.pt) to load, read with weights_only=True")
    _add_common(torch_parser)

    keras_parser = add_command(frameworks, "keras", help="a Keras 3 model saved as .keras",
                               description=_KERAS_DESCRIPTION, handler=_export_keras)
    keras_parser.add_argument("source", metavar="MODEL.keras", help="the .keras file")
    keras_parser.add_argument("--unsafe-load", action="store_true",
                              help="allow layers that run arbitrary code (Lambda); only for trusted files")
    _add_common(keras_parser)

    saved_parser = add_command(frameworks, "saved-model", help="a TensorFlow SavedModel directory",
                               description=_SAVED_MODEL_DESCRIPTION, handler=_export_keras)
    saved_parser.add_argument("source", metavar="DIR", help="the SavedModel directory")
    _add_common(saved_parser)
