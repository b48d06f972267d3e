"""Export a TensorFlow/Keras model to ONNX with tf2onnx, then prove parity in ONNX Runtime.

Accepted sources
    - a Keras 3 model object;
    - a ``.keras`` file, loaded with ``safe_mode=True`` so that it cannot run code (a ``Lambda``
      layer is refused unless ``unsafe_load=True``, the CLI's ``--unsafe-load``);
    - a TensorFlow SavedModel directory (its ``serving_default`` signature).

How
    ``tf2onnx.convert.from_keras`` fails on Keras 3 models (KeyError 'keras_tensor_N'), so the
    model is wrapped in a ``tf.function`` with an explicit input signature that returns a dict
    (whose keys name the ONNX outputs) and converted with ``tf2onnx.convert.from_function``.
    The batch axis is ``None`` in the signature (dynamic) unless ``dynamic_batch=False``.
    The default opset, 17, is within what tf2onnx 1.17 supports (<= 18).

Names (when not given)
    A Keras model with one input/output gets ``input`` / ``output``; several inputs keep the
    Keras input names and several outputs are ``output_0``, ``output_1``... A SavedModel keeps
    its signature's input and output names.

Parity
    Checked in ONNX Runtime on ``example_inputs`` (random inputs of the model's shape when not
    given) at batch 2 and, when the batch is dynamic, at batch 3. The export is staged beside
    the output and moved into place only after parity passed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.converters.parity import ExportResult, ParityCheck, check_parity
from onnx_compress.converters.settings import KERAS_OPSET, ExportSettings
from onnx_compress.data import InputSpec, synthetic_inputs
from onnx_compress.errors import one_line, ExportError, ModelLoadError, SettingError, UnsafeModelError
from onnx_compress.model_io import save_model, staged_output
from onnx_compress.optional import require
from onnx_compress.runtime.session import Runner, SessionSettings
from onnx_compress.setting import overridden

__all__ = ["export_keras", "load_keras_model", "DEFAULT_OPSET"]

logger = logging.getLogger(__name__)

#: the default opset (declared in :mod:`onnx_compress.converters.settings`)
DEFAULT_OPSET = KERAS_OPSET


@dataclasses.dataclass
class _Source:
    """A callable TF model with its input specs and the names of its inputs/outputs."""

    call: Callable[[dict[str, Any]], dict[str, Any]]  # ONNX input name -> tensor, returns name -> tensor
    specs: list[InputSpec]
    output_names: list[str]
    keepalive: Any = None  # the loaded SavedModel object its signature functions need


def load_keras_model(path: str | os.PathLike[str], *, unsafe_load: bool = False) -> Any:
    """Load a ``.keras`` file with ``safe_mode`` on (unless ``unsafe_load``), compile off."""
    keras = require("keras", "loading a Keras model")
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"Keras model file not found: {file}")
    try:
        return keras.saving.load_model(file, safe_mode=not unsafe_load, compile=False)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise UnsafeModelError(
                f"{file} contains a layer that runs arbitrary code (a Lambda layer); it was not loaded. "
                "Load it only if you trust the file: --unsafe-load (CLI) or unsafe_load=True (API)"
            ) from exc
        raise ModelLoadError(f"could not load Keras model {file}: {one_line(exc)}") from exc
    except Exception as exc:  # zip errors, missing config, version mismatch...
        raise ModelLoadError(f"could not load Keras model {file} ({type(exc).__name__}: {one_line(exc)})") from exc


def _keras_source(
    model: Any, input_names: Sequence[str] | None, output_names: Sequence[str] | None
) -> _Source:
    tf = require("tensorflow", "exporting a Keras model")
    try:
        keras_inputs = list(model.inputs)
    except (AttributeError, ValueError) as exc:
        raise ExportError(
            "the Keras model has no defined inputs (a subclassed model that was never built?); "
            "call it once on data or build it with keras.Input"
        ) from exc
    if input_names:
        names = list(input_names)
    elif len(keras_inputs) == 1:
        names = ["input"]
    else:
        names = [str(t.name) for t in keras_inputs]
    if len(names) != len(keras_inputs):
        raise SettingError(f"{len(names)} input_names given for {len(keras_inputs)} model inputs")
    specs = [
        InputSpec(name=name, dtype=np.dtype(tf.as_dtype(t.dtype).as_numpy_dtype), shape=tuple(t.shape))
        for name, t in zip(names, keras_inputs)
    ]
    keras_outputs = list(model.outputs)
    if output_names:
        outs = list(output_names)
    elif len(keras_outputs) == 1:
        outs = ["output"]
    else:
        outs = [f"output_{i}" for i in range(len(keras_outputs))]
    if len(outs) != len(keras_outputs):
        raise SettingError(f"{len(outs)} output_names given for {len(keras_outputs)} model outputs")

    def call(feeds: dict[str, Any]) -> dict[str, Any]:
        args = [feeds[name] for name in names]
        result = model(args[0] if len(args) == 1 else args, training=False)
        result = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(outs, result))

    return _Source(call=call, specs=specs, output_names=outs)


def _saved_model_source(
    directory: Path, input_names: Sequence[str] | None, output_names: Sequence[str] | None
) -> _Source:
    tf = require("tensorflow", "exporting a SavedModel")
    if not (directory / "saved_model.pb").is_file():
        raise ModelLoadError(f"not a SavedModel directory (no saved_model.pb): {directory}")
    try:
        loaded = tf.saved_model.load(str(directory))
    except Exception as exc:
        raise ModelLoadError(f"could not load SavedModel {directory}: {one_line(exc)}") from exc
    if "serving_default" not in loaded.signatures:
        raise ExportError(f"SavedModel {directory} has no 'serving_default' signature")
    signature = loaded.signatures["serving_default"]
    _, kw_specs = signature.structured_input_signature
    sig_names = sorted(kw_specs)
    names = list(input_names) if input_names else sig_names
    if len(names) != len(sig_names):
        raise SettingError(f"{len(names)} input_names given for {len(sig_names)} signature inputs")
    sig_outputs = sorted(signature.structured_outputs)
    outs = list(output_names) if output_names else sig_outputs
    if len(outs) != len(sig_outputs):
        raise SettingError(f"{len(outs)} output_names given for {len(sig_outputs)} signature outputs")
    specs = [
        InputSpec(name=name, dtype=np.dtype(kw_specs[sig].dtype.as_numpy_dtype), shape=tuple(kw_specs[sig].shape))
        for name, sig in zip(names, sig_names)
    ]

    def call(feeds: dict[str, Any]) -> dict[str, Any]:
        result = signature(**{sig: feeds[name] for name, sig in zip(names, sig_names)})
        return {out: result[sig] for out, sig in zip(outs, sig_outputs)}

    return _Source(call=call, specs=specs, output_names=outs, keepalive=loaded)


def _example_feeds(specs: Sequence[InputSpec], example_inputs: Any, batch: int) -> dict[str, np.ndarray]:
    if example_inputs is None:
        return synthetic_inputs([dataclasses.replace(s, shape=(None, *s.shape[1:])) for s in specs], batch=batch)  # type: ignore[index]
    if isinstance(example_inputs, Mapping):
        feeds = {k: np.asarray(v) for k, v in example_inputs.items()}
    else:
        items = example_inputs if isinstance(example_inputs, (list, tuple)) else [example_inputs]
        if len(items) != len(specs):
            raise SettingError(f"{len(items)} example inputs given for {len(specs)} model inputs")
        feeds = {spec.name: np.asarray(item) for spec, item in zip(specs, items)}
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise SettingError(f"example_inputs lack {missing}")
    return feeds


def _second_batch(feeds: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, arr in feeds.items():
        reps = (batch + arr.shape[0] - 1) // arr.shape[0]
        tiled = np.concatenate([arr] * reps)[:batch]
        if np.issubdtype(tiled.dtype, np.floating):
            tiled = tiled + (0.01 * (np.abs(tiled).mean() + 1e-3) * rng.standard_normal(tiled.shape)).astype(tiled.dtype)
        out[name] = tiled
    return out


def _name_batch_axis(model: ir.Model) -> None:
    """Call the dynamic first axis of every graph input and output ``batch`` (tf2onnx writes
    ``unk__N``), as the PyTorch exporter does, so both frameworks' models look alike."""
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is not None and len(value.shape) and not isinstance(value.shape[0], int):
            value.shape = ir.Shape(["batch", *value.shape[1:]])


def _refuse_unconverted_ops(proto: Any) -> None:
    """tf2onnx leaves a TensorFlow op it cannot convert in the graph under its TensorFlow name
    (it only logs "Unsupported ops"), and ONNX Runtime then fails to load the model with a
    message about the ONNX op set. Name those ops here instead, with the nodes that hold them.
    Seen: Keras 3's ``activation="gelu"`` (exact GELU) becomes ``Erfc``, which tf2onnx 1.17
    cannot convert; ``keras.activations.gelu(x, approximate=True)`` or the erf form
    ``0.5 * x * (1 + erf(x / sqrt(2)))`` exports."""
    import onnx

    versions = {entry.domain or "": entry.version for entry in proto.opset_import}
    unknown: dict[str, list[str]] = {}
    for node in proto.graph.node:
        domain = node.domain or ""
        if domain not in ("", "ai.onnx"):
            continue  # contrib/custom domains are ONNX Runtime's to judge
        try:
            onnx.defs.get_schema(node.op_type, versions.get("", 1), domain)
        except onnx.defs.SchemaError:
            unknown.setdefault(node.op_type, []).append(node.name)
    if unknown:
        listed = "; ".join(f"{op} ({len(nodes)} node{'s' if len(nodes) > 1 else ''}, e.g. {nodes[0]})"
                           for op, nodes in sorted(unknown.items()))
        hint = (" (Keras' exact gelu: use gelu(x, approximate=True) or write 0.5 * x * (1 + erf(x / sqrt(2))))"
                if "Erfc" in unknown else "")
        raise ExportError(f"tf2onnx could not convert these TensorFlow ops to ONNX: {listed}{hint}")


def export_keras(model_or_path: Any, path: str | os.PathLike[str], settings: ExportSettings | None = None, *,
                 example_inputs: Any = None, unsafe_load: bool = False, **overrides: Any) -> ExportResult:
    """Export a Keras model (object or ``.keras`` file) or a SavedModel directory to ONNX.

    ``settings``: names, opset (default :data:`KERAS_OPSET`), batch axis and parity tolerance, an
    :class:`~onnx_compress.converters.settings.ExportSettings`; ``**overrides`` sets single ones on
    top of it (``opset=17``). See the module docstring for names, parity and safety. Raises
    ExportError / ParityError / UnsafeModelError / ModelLoadError with a one-line reason.
    """
    settings = overridden(settings or ExportSettings(), overrides, where="export_keras()")
    opset, dynamic_batch = settings.opset or KERAS_OPSET, settings.dynamic_batch
    atol, rtol = settings.atol, settings.rtol
    input_names, output_names = settings.input_names or None, settings.output_names or None
    tf = require("tensorflow", "exporting a TensorFlow/Keras model")
    tf2onnx = require("tf2onnx", "exporting a TensorFlow/Keras model")
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    if not 9 <= opset <= 18:
        raise SettingError(f"opset must be between 9 and 18 for tf2onnx, got {opset}")

    if isinstance(model_or_path, (str, os.PathLike)):
        source_path = Path(model_or_path)
        if source_path.is_dir():
            source = _saved_model_source(source_path, input_names, output_names)
        elif source_path.suffix == ".keras":
            source = _keras_source(load_keras_model(source_path, unsafe_load=unsafe_load), input_names, output_names)
        elif source_path.exists():
            raise ModelLoadError(f"expected a .keras file or a SavedModel directory, got {source_path}")
        else:
            raise ModelLoadError(f"model not found: {source_path}")
    else:
        source = _keras_source(model_or_path, input_names, output_names)

    signature = [
        tf.TensorSpec((None if dynamic_batch else s.shape[0], *s.shape[1:]), tf.as_dtype(s.dtype), name=s.name)  # type: ignore[index]
        for s in source.specs
    ]

    @tf.function(input_signature=signature)
    def serving(*args: Any) -> dict[str, Any]:
        return source.call({spec.name: arg for spec, arg in zip(source.specs, args)})

    try:
        proto, _ = tf2onnx.convert.from_function(serving, input_signature=signature, opset=opset)
    except Exception as exc:
        raise ExportError(f"tf2onnx conversion failed: {type(exc).__name__}: {one_line(exc)}") from exc
    _refuse_unconverted_ops(proto)

    feeds = _example_feeds(source.specs, example_inputs, batch=2 if dynamic_batch else source.specs[0].shape[0])  # type: ignore[index]

    def expected(batch_feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = source.call({k: tf.constant(v) for k, v in batch_feeds.items()})
        return [np.asarray(result[name]) for name in source.output_names]

    model = ir.serde.deserialize_model(proto)
    if dynamic_batch:
        _name_batch_axis(model)
    with staged_output(path) as staged:
        save_model(model, staged)
        runner = Runner(staged, SessionSettings(provider="cpu"))
        checks: list[ParityCheck] = [check_parity(staged, feeds, expected(feeds), atol=atol, rtol=rtol, runner=runner)]
        if dynamic_batch:
            second = _second_batch(feeds, 3)
            checks.append(check_parity(staged, second, expected(second), atol=atol, rtol=rtol, runner=runner))
        del runner
    result = ExportResult(
        path=Path(path),
        input_names=[s.name for s in source.specs],
        output_names=source.output_names,
        opset=opset,
        external_data=(Path(str(path) + ".data")).exists(),
        parity=checks,
    )
    logger.info("exported %s (max abs error %.3g)", path, result.max_abs_error)
    return result

