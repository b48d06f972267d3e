"""Generate an MLP whose weights exceed the 2 GB protobuf limit, written with external data.

``x[batch, width] -> MatMul(W1[width, hidden]) -> Add(b1) -> Relu -> MatMul(W2[hidden, width])
-> Add(b2) -> y``. With the defaults (width 8192, hidden 36864) the two weights hold 2.25 GiB of
float32. The weights are written chunk by chunk through a memory map, so generating the model
never holds them in memory; they are scaled so activations stay O(1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["write_large_mlp"]


def _external(name: str, shape: tuple[int, ...], location: str, offset: int) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
    tensor.data_location = TensorProto.EXTERNAL
    length = int(np.prod(shape)) * 4
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def write_large_mlp(folder: Path, *, width: int = 8192, hidden: int = 36864, seed: int = 0) -> Path:
    """Write ``folder/large.onnx`` + ``folder/large.onnx.data``; return the model path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "large.onnx"
    data_name = "large.onnx.data"
    shapes = {"W1": (width, hidden), "b1": (hidden,), "W2": (hidden, width), "b2": (width,)}
    offsets, total = {}, 0
    for name, shape in shapes.items():
        offsets[name] = total
        total += int(np.prod(shape)) * 4
    blob = np.memmap(folder / data_name, dtype=np.uint8, mode="w+", shape=(total,))
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        view = blob[offsets[name] : offsets[name] + int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
        scale = 1.0 / np.sqrt(shape[0]) if len(shape) == 2 else 0.01
        rows_per_chunk = max(1, (64 << 20) // (4 * shape[-1]))
        for start in range(0, shape[0], rows_per_chunk):
            stop = min(shape[0], start + rows_per_chunk)
            view[start:stop] = (rng.standard_normal((stop - start, *shape[1:]), dtype=np.float32) * scale)
    blob.flush()
    del blob
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h0"], name="fc1"),
            helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
            helper.make_node("Relu", ["h1"], ["h"], name="relu"),
            helper.make_node("MatMul", ["h", "W2"], ["y0"], name="fc2"),
            helper.make_node("Add", ["y0", "b2"], ["y"], name="fc2_bias"),
        ],
        "large_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [_external(name, shape, data_name, offsets[name]) for name, shape in shapes.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)  # the proto itself is small: all weights live in the data file
    return path
