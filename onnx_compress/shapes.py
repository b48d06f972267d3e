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
from collections.abc import Mapping

import onnx
import onnx_ir as ir

__all__ = ["Shape", "infer_value_shapes"]

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
