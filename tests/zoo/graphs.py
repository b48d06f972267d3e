"""Hand-built ONNX graphs that mimic what other converters write (onnx.helper, random weights).

- :func:`paddle_like_classifier`: the paddle2onnx pattern of a small image classifier: every
  Conv weight reaches its Conv through an ``Identity`` (or a ``Reshape`` / ``Transpose`` /
  ``Cast`` / ``Unsqueeze`` of a stored initializer; one Conv has its bias input with the
  weight behind ``Identity``, which ONNX Runtime's dynamic quantizer rejects), Conv biases are a separate
  ``Add(conv, Reshape(bias, [1, C, 1, 1]))`` (and the broadcast forms ``[C, 1, 1]`` and
  ``[1, C, 1, 1]``), BatchNormalization, dynamic batch, H and W, a GlobalAveragePool +
  MatMul/Add head.
- :func:`paddle_like_detector`: the same converter style with two strides merged like an FPN
  (Resize + Add) and a per-pixel head: a detector's shape.
- :func:`opset9_constant_weights`: weights computed by ``ConstantOfShape`` from a shape that
  is also a graph input with an initializer (what ONNX's own opset-9 test models do).
- :func:`if_branch_vad`: a recurrent voice-activity-like model whose layers sit inside the
  branches of an ``If``; both branches read the SAME outer initializers (a GRU-like cell of
  MatMul/Gemm and gates), as exporters of models with a state switch write them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["paddle_like_classifier", "paddle_like_detector", "opset9_constant_weights", "if_branch_vad"]

_OPSET = 11  # paddle2onnx's default opset for many releases


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


class _Builder:
    """Nodes and initializers of one graph, with paddle-style names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def weight(self, shape: tuple[int, ...], scale: float | None = None) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale = scale if scale is not None else np.sqrt(2.0 / max(fan_in, 1))
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def node(self, op: str, inputs: list[str], outputs: list[str] | None = None, **attrs) -> str:
        out = outputs or [self.name(f"{op.lower()}.tmp")]
        self.nodes.append(helper.make_node(op, inputs, out, name=self.name(f"p2o.{op}"), **attrs))
        return out[0]

    def conv_weight(self, index: int, shape: tuple[int, int, int, int], form: str) -> str:
        """A Conv weight behind ``form``: identity, reshape, transpose, cast, unsqueeze or plain."""
        w = self.weight(shape)
        stored = f"conv2d_{index}.w_0"
        if form == "plain":
            self.inits.append(_init(stored, w))
            return stored
        if form == "identity":
            self.inits.append(_init(stored, w))
            return self.node("Identity", [stored])
        if form == "reshape":
            self.inits.append(_init(stored, w.reshape(shape[0], -1)))
            self.inits.append(_init(f"{stored}.shape", np.array(shape, dtype=np.int64)))
            return self.node("Reshape", [stored, f"{stored}.shape"])
        if form == "transpose":
            self.inits.append(_init(stored, np.ascontiguousarray(w.transpose(1, 0, 2, 3))))
            return self.node("Transpose", [stored], perm=[1, 0, 2, 3])
        if form == "cast":
            self.inits.append(_init(stored, w.astype(np.float16)))
            return self.node("Cast", [stored], to=TensorProto.FLOAT)
        if form == "unsqueeze":
            self.inits.append(_init(stored, w[0] if shape[0] == 1 else w.reshape(shape[0], shape[1], -1)))
            if shape[0] == 1:
                return self.node("Unsqueeze", [stored], axes=[0])
            # [O, I, k*k] -> reshape: the Unsqueeze form only fits a single output channel
            self.inits.append(_init(f"{stored}.shape", np.array(shape, dtype=np.int64)))
            return self.node("Reshape", [stored, f"{stored}.shape"])
        raise ValueError(form)

    def bias_add(self, index: int, x: str, channels: int, form: str) -> str:
        """``x + bias`` broadcast over N, H, W in one of paddle2onnx's forms."""
        b = (self.rng.standard_normal(channels) * 0.1).astype(np.float32)
        stored = f"conv2d_{index}.b_0"
        if form == "reshape":  # Add(conv, Reshape(b, [1, C, 1, 1]))
            self.inits.append(_init(stored, b))
            self.inits.append(_init(f"{stored}.shape", np.array([1, channels, 1, 1], dtype=np.int64)))
            bias = self.node("Reshape", [stored, f"{stored}.shape"])
        elif form == "c11":  # a stored [C, 1, 1]
            self.inits.append(_init(stored, b.reshape(channels, 1, 1)))
            bias = stored
        elif form == "1c11":  # a stored [1, C, 1, 1], added first (bias + conv)
            self.inits.append(_init(stored, b.reshape(1, channels, 1, 1)))
            return self.node("Add", [stored, x])
        elif form == "unsqueeze":  # Unsqueeze(b, axes=[1, 2]) -> [C, 1, 1]
            self.inits.append(_init(stored, b))
            bias = self.node("Unsqueeze", [stored], axes=[1, 2])
        else:
            raise ValueError(form)
        return self.node("Add", [x, bias])

    def batchnorm(self, index: int, x: str, channels: int) -> str:
        prefix = f"batch_norm_{index}"
        self.inits += [
            _init(f"{prefix}.w_0", (1 + 0.1 * self.rng.standard_normal(channels)).astype(np.float32)),
            _init(f"{prefix}.b_0", (0.1 * self.rng.standard_normal(channels)).astype(np.float32)),
            _init(f"{prefix}.w_1", (0.1 * self.rng.standard_normal(channels)).astype(np.float32)),
            _init(f"{prefix}.w_2", (1 + 0.1 * self.rng.random(channels)).astype(np.float32)),
        ]
        return self.node("BatchNormalization", [x, f"{prefix}.w_0", f"{prefix}.b_0", f"{prefix}.w_1",
                                                f"{prefix}.w_2"], epsilon=1e-5)

    def conv(self, index: int, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, *, weight_form: str,
             bias_form: str | None, group: int = 1) -> str:
        w = self.conv_weight(index, (cout, cin // group, k, k), weight_form)
        inputs = [x, w]
        if bias_form == "input":  # Conv(x, Identity(W), b): ONNX Runtime's Conv quantizer needs W an initializer
            self.inits.append(_init(f"conv2d_{index}.b_0", (self.rng.standard_normal(cout) * 0.1).astype(np.float32)))
            inputs.append(f"conv2d_{index}.b_0")
            bias_form = None
        y = self.node("Conv", inputs, kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride],
                      group=group, dilations=[1, 1])
        return self.bias_add(index, y, cout, bias_form) if bias_form else y


def _finish(b: _Builder, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
            opset: int = _OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, name, inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", opset)],
                              producer_name="PaddlePaddle-like", ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def paddle_like_classifier(seed: int = 0, width: int = 16, classes: int = 10) -> onnx.ModelProto:
    """A paddle2onnx-style classifier: input ``x`` [N, 3, H, W] (all dynamic), output ``softmax`` [N, classes]."""
    b = _Builder(seed)
    x = "x"
    h = b.conv(0, x, 3, width, stride=2, weight_form="identity", bias_form="reshape")
    h = b.batchnorm(0, h, width)
    h = b.node("Relu", [h])
    h = b.conv(1, h, width, width, weight_form="reshape", bias_form="c11")
    h = b.node("Relu", [h])
    h = b.conv(2, h, width, width, weight_form="identity", bias_form="reshape", group=width)  # depthwise
    h = b.batchnorm(2, h, width)
    h = b.node("Relu", [h])
    h = b.conv(3, h, width, 2 * width, k=1, weight_form="transpose", bias_form="1c11")
    h = b.node("Relu", [h])
    h = b.conv(4, h, 2 * width, 2 * width, stride=2, weight_form="cast", bias_form="unsqueeze")
    h = b.batchnorm(4, h, 2 * width)
    h = b.node("Relu", [h])
    h = b.conv(5, h, 2 * width, 4 * width, k=1, weight_form="identity", bias_form="input")
    h = b.node("Relu", [h])
    pooled = b.node("GlobalAveragePool", [h])
    b.inits.append(_init("flatten.shape", np.array([-1, 4 * width], dtype=np.int64)))
    flat = b.node("Reshape", [pooled, "flatten.shape"])
    b.inits.append(_init("linear_0.w_0", b.weight((4 * width, classes))))
    b.inits.append(_init("linear_0.b_0", np.zeros(classes, dtype=np.float32)))
    fc_w = b.node("Identity", ["linear_0.w_0"])
    logits = b.node("Add", [b.node("MatMul", [flat, fc_w]), "linear_0.b_0"])
    b.node("Softmax", [logits], ["softmax"], axis=1)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 3,
                                                                      "p2o.DynamicDimension.1",
                                                                      "p2o.DynamicDimension.2"])]
    outputs = [helper.make_tensor_value_info("softmax", TensorProto.FLOAT, ["p2o.DynamicDimension.0", classes])]
    return _finish(b, "paddle_like_classifier", inputs, outputs)


def paddle_like_detector(seed: int = 1, width: int = 16) -> onnx.ModelProto:
    """A paddle2onnx-style detector: backbone at strides 2 and 4, FPN merge (Resize + Add), a
    per-pixel head; input ``x`` [N, 3, H, W] dynamic (H, W multiples of 4), output ``maps``."""
    b = _Builder(seed)
    c1 = b.conv(0, "x", 3, width, stride=2, weight_form="identity", bias_form="reshape")
    c1 = b.node("Relu", [b.batchnorm(0, c1, width)])
    c2 = b.conv(1, c1, width, 2 * width, stride=2, weight_form="identity", bias_form="reshape")
    c2 = b.node("Relu", [b.batchnorm(1, c2, 2 * width)])
    c2 = b.node("Relu", [b.conv(2, c2, 2 * width, 2 * width, weight_form="reshape", bias_form="reshape")])
    lat1 = b.conv(3, c1, width, width, k=1, weight_form="identity", bias_form="reshape")
    lat2 = b.conv(4, c2, 2 * width, width, k=1, weight_form="identity", bias_form="c11")
    b.inits.append(_init("nearest.roi", np.zeros(0, dtype=np.float32)))
    b.inits.append(_init("nearest.scales", np.array([1, 1, 2, 2], dtype=np.float32)))
    up = b.node("Resize", [lat2, "nearest.roi", "nearest.scales"], mode="nearest")
    merged = b.node("Add", [lat1, up])
    head = b.node("Relu", [b.conv(5, merged, width, width, weight_form="identity", bias_form="reshape")])
    logits = b.conv(6, head, width, 4, k=1, weight_form="identity", bias_form="reshape")
    b.node("Sigmoid", [logits], ["maps"])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    outputs = [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["N", 4, "H2", "W2"])]
    return _finish(b, "paddle_like_detector", inputs, outputs)


def opset9_constant_weights(seed: int = 2) -> onnx.ModelProto:
    """An opset-9 CNN whose weights are ``ConstantOfShape`` outputs (plus a random initializer
    ``Add``-ed, so that channels differ) whose shape inputs are graph inputs with initializers,
    as in ONNX's own ``light_*`` test models (IR version 3: initializers are also inputs)."""
    b = _Builder(seed)
    graph_inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 32, 32])]

    def const_weight(name: str, shape: tuple[int, ...]) -> str:
        shape_name = f"{name}_shape"
        b.inits.append(_init(shape_name, np.array(shape, dtype=np.int64)))
        graph_inputs.append(helper.make_tensor_value_info(shape_name, TensorProto.INT64, [len(shape)]))
        filled = b.node("ConstantOfShape", [shape_name],
                        value=numpy_helper.from_array(np.array([0.01], dtype=np.float32)))
        noise = f"{name}_noise"
        b.inits.append(_init(noise, b.weight(shape)))
        graph_inputs.append(helper.make_tensor_value_info(noise, TensorProto.FLOAT, list(shape)))
        return b.node("Add", [filled, noise])

    h = b.node("Conv", ["data_0", const_weight("conv1_w", (16, 3, 3, 3)), const_weight("conv1_b", (16,))],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    h = b.node("Relu", [h])
    h = b.node("Conv", [h, const_weight("conv2_w", (32, 16, 3, 3)), const_weight("conv2_b", (32,))],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    h = b.node("Relu", [h])
    h = b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    b.inits.append(_init("flat_shape", np.array([1, -1], dtype=np.int64)))
    graph_inputs.append(helper.make_tensor_value_info("flat_shape", TensorProto.INT64, [2]))
    flat = b.node("Reshape", [h, "flat_shape"])
    fc = b.node("Gemm", [flat, const_weight("fc_w", (10, 32 * 8 * 8)), const_weight("fc_b", (10,))], transB=1)
    b.node("Softmax", [fc], ["prob_1"])
    outputs = [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, 10])]
    graph = helper.make_graph(b.nodes, "opset9_constant_weights", graph_inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 9)], ir_version=3)
    onnx.checker.check_model(model, full_check=True)
    return model


def if_branch_vad(seed: int = 3, features: int = 64, hidden: int = 128) -> onnx.ModelProto:
    """A voice-activity-like model: inputs ``input`` [N, features], ``state`` [N, hidden], ``sr``
    (a scalar int64 sample rate: 16000 takes the then-branch, else the else-branch); outputs
    ``output`` [N, 1] and ``stateN`` [N, hidden].

    Both branches run a GRU-like cell (``z = sigmoid(x Wz + h Uz)``, ``c = tanh(x Wc + (h Uc))``
    with ``Wc = Transpose(Wc_t)`` computed in each branch,
    ``h' = (1 - z) c + z h``) then a Gemm head; the then-branch scales its input first. All the
    layer weights are initializers of the MAIN graph, read by both branches (the weights are
    shared, not duplicated: the file holds each once).
    """
    b = _Builder(seed)
    inits = {
        "enc_w": b.weight((features, hidden)),
        "Wz": b.weight((hidden, hidden)), "Uz": b.weight((hidden, hidden)),
        "Wc_t": b.weight((hidden, hidden)), "Uc": b.weight((hidden, hidden)),
        "head_w": b.weight((hidden, hidden)), "head_b": np.zeros(hidden, dtype=np.float32),
        "out_w": b.weight((1, hidden)), "out_b": np.zeros(1, dtype=np.float32),
        "sr16k": np.array(16000, dtype=np.int64), "half": np.array(0.5, dtype=np.float32),
        "one": np.array(1.0, dtype=np.float32),
    }

    def branch(tag: str, scale_input: bool) -> onnx.GraphProto:
        nodes: list[onnx.NodeProto] = []

        def n(op: str, ins: list[str], **attrs) -> str:
            out = f"{tag}_{op.lower()}_{len(nodes)}"
            nodes.append(helper.make_node(op, ins, [out], name=f"{tag}/{op}_{len(nodes)}", **attrs))
            return out

        x = n("Mul", ["input", "half"]) if scale_input else "input"
        x = n("Relu", [n("MatMul", [x, "enc_w"])])
        z = n("Sigmoid", [n("Add", [n("MatMul", [x, "Wz"]), n("MatMul", ["state", "Uz"])])])
        wc = n("Transpose", ["Wc_t"], perm=[1, 0])  # the exporter's Linear: x @ W^T, written per branch
        c = n("Tanh", [n("Add", [n("MatMul", [x, wc]), n("MatMul", ["state", "Uc"])])])
        h = n("Add", [n("Mul", [n("Sub", ["one", z]), c]), n("Mul", [z, "state"])])
        y = n("Relu", [n("Gemm", [h, "head_w", "head_b"])])
        prob = n("Sigmoid", [n("Gemm", [y, "out_w", "out_b"], transB=1)])
        nodes.append(helper.make_node("Identity", [prob], [f"{tag}_output"], name=f"{tag}/out"))
        nodes.append(helper.make_node("Identity", [h], [f"{tag}_state"], name=f"{tag}/state"))
        outs = [helper.make_tensor_value_info(f"{tag}_output", TensorProto.FLOAT, ["N", 1]),
                helper.make_tensor_value_info(f"{tag}_state", TensorProto.FLOAT, ["N", hidden])]
        return helper.make_graph(nodes, f"{tag}_branch", [], outs)

    cond = helper.make_node("Equal", ["sr", "sr16k"], ["is16k"], name="sr_check")
    if_node = helper.make_node("If", ["is16k"], ["output", "stateN"], name="If_0",
                               then_branch=branch("then", True), else_branch=branch("else", False))
    graph = helper.make_graph(
        [cond, if_node], "if_branch_vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, ["N", hidden]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, ["N", hidden])],
        initializer=[_init(k, v) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 16)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model
