"""Static shapes of every value in a model, from ONNX shape inference.

:func:`infer_value_shapes` fixes the model's symbolic input dimensions (the first axis to
``batch``, named axes from ``dims``), runs ``onnx.shape_inference`` with data propagation (so
``Shape -> Gather -> Concat -> Reshape`` chains resolve), and returns each value's shape.

The model is never modified and never serialized with its weights: large initializers are
replaced by typed graph inputs for the call (the technique onnx-ir uses around the ONNX C API),
so this works for models over the 2 GB protobuf limit. Small initializers (<= 1 KB: shapes,
axes, scalars) stay, since data propagation needs their values.

A dimension that inference cannot resolve is ``None``; callers must treat it as unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import onnx
import onnx_ir as ir

__all__ = ["Shape", "infer_value_shapes", "measured_shapes"]

logger = logging.getLogger(__name__)

Shape = tuple[int | None, ...]
_KEEP_INITIALIZER_MAX_BYTES = 1024


def _light_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto whose large initializers are turned into graph inputs."""
    proto = ir.serde.serialize_model(model)
    graph = proto.graph
    input_names = {value.name for value in graph.input}
    kept = []
    for tensor in graph.initializer:
        small = tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.ByteSize() <= _KEEP_INITIALIZER_MAX_BYTES
        if small:
            kept.append(tensor)
            continue
        if tensor.name not in input_names:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto


def _fix_input_dims(proto: onnx.ModelProto, batch: int, dims: Mapping[str, int]) -> None:
    """Give symbolic input axes concrete sizes. Weights lifted to inputs have static shapes and
    are left as they are."""
    initializer_names = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in initializer_names or not value.type.HasField("tensor_type"):
            continue
        if not value.type.tensor_type.HasField("shape"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            name = dim.dim_param if dim.HasField("dim_param") else ""
            if name and name in dims:
                dim.dim_value = int(dims[name])
            elif axis == 0:
                dim.dim_value = batch


def _contrib_aware_inference(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """ONNX Runtime's symbolic shape inference, which knows the com.microsoft ops (fused
    transformer ops, quantized MatMuls) that ONNX's own inference stops at; None if it fails."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=True)
    except Exception as exc:  # it raises on graphs it cannot follow
        logger.info("ONNX Runtime's symbolic shape inference failed (%s); using ONNX's", exc)
        return None


def _shape_of(type_proto: onnx.TypeProto) -> Shape | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(
        int(d.dim_value) if d.HasField("dim_value") else None for d in type_proto.tensor_type.shape.dim
    )


def infer_value_shapes(
    model: ir.Model, *, batch: int = 1, dims: Mapping[str, int] | None = None
) -> dict[str, Shape]:
    """Shape of every value (inputs, initializers, node outputs) by name; see the module doc."""
    proto = _light_proto(model)
    _fix_input_dims(proto, batch, dims or {})
    inferred = None
    if any(opset.domain not in ("", "ai.onnx") for opset in proto.opset_import):
        inferred = _contrib_aware_inference(proto)
    if inferred is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
        except Exception as exc:  # inference errors on exotic graphs: fall back to declared shapes
            logger.warning("shape inference failed (%s); using declared shapes only", exc)
            inferred = proto
    shapes: dict[str, Shape] = {}
    for tensor in inferred.graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shape = _shape_of(value.type)
        if shape is not None:
            shapes[value.name] = shape
    return shapes


def measured_shapes(
    model: ir.Model, names: Iterable[str], *, batch: int = 1, dims: Mapping[str, int] | None = None
) -> dict[str, Shape]:
    """Shapes of the named values measured by running the model once in ONNX Runtime.

    The fallback for values that static inference cannot follow (exporter-specific reshapes,
    ops neither ONNX nor ONNX Runtime's symbolic inference know): a copy of the model exposes
    them as extra (untyped) graph outputs and runs on synthetic inputs of the requested batch
    and dimension sizes. Returns {} when the model cannot run that way (a symbolic input axis
    without a size, an ONNX Runtime error, an invalid graph): callers keep those values unknown.
    """
    import onnxruntime as ort

    from onnx_compress.data import input_specs, synthetic_inputs
    from onnx_compress.model_io import materialized_path, model_bytes, needs_file

    wanted = set(names)
    try:
        work = model.clone()
    except RuntimeError as exc:  # an invalid graph (a node reading a value nothing produces)
        logger.info("could not copy the model to measure shapes: %s", str(exc).splitlines()[0])
        return {}
    produced = {v.name: v for node in work.graph for v in node.outputs if v.name in wanted}
    existing = {v.name for v in work.graph.outputs}
    for name, value in produced.items():
        if name not in existing:
            value.type = None  # ONNX Runtime accepts untyped outputs; a wrong type would fail
            value.shape = None
            work.graph.outputs.append(value)
    try:
        feeds = synthetic_inputs(input_specs(work), batch=batch, dims=dims)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if needs_file(work):
            with materialized_path(work) as path:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        else:
            session = ort.InferenceSession(model_bytes(work), options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, feeds)
    except Exception as exc:  # DataError for a missing dim size, ORT errors
        logger.info("could not measure shapes by running the model: %s", exc)
        return {}
    return {
        meta.name: tuple(int(d) for d in array.shape)
        for meta, array in zip(session.get_outputs(), outputs)
        if meta.name in wanted
    }
