"""Packing fused attention for QAttention (passes/quantize/attention_pack.py): the padding-mask
proof, its refusals, and dynamic int8 on the packed graph (same outputs as the unpacked int8 model)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnx_compress.model_io import load_model
from onnx_compress.passes import Fuse, Normalize, Quantize
from onnx_compress.passes.quantize.attention_pack import key_padding_source, pack_attention, parity_problem
from onnx_compress.runtime import Runner
from onnx_compress.stats import op_histogram


@pytest.fixture(scope="module")
def fused_encoder(keras_encoder_onnx) -> ir.Model:
    """The Keras/tf2onnx encoder after ``fuse``: 2 MultiHeadAttention whose additive bias tf2onnx
    computes from ``attention_mask``."""
    return Fuse()(Normalize()(load_model(keras_encoder_onnx)).model).model


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _attentions(model: ir.Model) -> list[ir.Node]:
    return [node for node in model.graph if node.op_type == "MultiHeadAttention"]


def _rebias(model: ir.Model, make) -> ir.Model:
    """``model`` with every attention bias replaced by ``make(model, bias)`` (a new value)."""
    model = _copy(model)
    for node in _attentions(model):
        node.replace_input_with(5, make(model, node, node.inputs[5]))
    return model


def test_the_keras_encoders_bias_is_proven_the_padding_mask_and_packing_keeps_the_outputs(fused_encoder):
    model = _copy(fused_encoder)
    mask, why = key_padding_source(model, _attentions(model)[0].inputs[5])
    assert mask is not None and mask.name == "attention_mask", why
    done = pack_attention(model, lambda name: True)
    assert len(done.packed) == 2 and not done.skipped and done.mask == "attention_mask"
    ops = op_histogram(model)
    assert ops["com.microsoft::Attention"] == 2 and "com.microsoft::MultiHeadAttention" not in ops
    assert parity_problem(fused_encoder, model, "attention_mask") is None


def test_a_causal_bias_is_not_a_padding_mask_and_stays_unpacked(fused_encoder):
    def causal(model, node, bias):
        seq = 32
        upper = np.triu(np.full((seq, seq), -1e9, np.float32), k=1)[None, None]
        tri = ir.Value(name=f"{node.name}_causal", const_value=ir.tensor(upper))
        model.graph.register_initializer(tri)
        add = ir.node("Add", [bias, tri], outputs=[ir.Value(name=f"{node.name}_causal_bias")])
        model.graph.insert_before(node, add)
        return add.outputs[0]

    model = _rebias(fused_encoder, causal)
    done = pack_attention(model, lambda name: True)
    assert not done.packed and len(done.skipped) == 2
    assert all("not 0 on every kept key" in why for _, why in done.skipped), done.skipped
    assert op_histogram(model)["com.microsoft::MultiHeadAttention"] == 2


def test_a_bias_that_reads_another_input_or_a_float_bias_input_is_refused(fused_encoder):
    def plus_ids(model, node, bias):
        ids = next(v for v in model.graph.inputs if v.name == "input_ids")
        cast = ir.node("Cast", [ids], attributes={"to": ir.DataType.FLOAT}, outputs=[ir.Value(name=f"{node.name}_f")])
        zero = ir.Value(name=f"{node.name}_zero", const_value=ir.tensor(np.array(0.0, np.float32)))
        model.graph.register_initializer(zero)
        mul = ir.node("Mul", [cast.outputs[0], zero], outputs=[ir.Value(name=f"{node.name}_z")])
        add = ir.node("Add", [bias, mul.outputs[0]], outputs=[ir.Value(name=f"{node.name}_b")])
        model.graph.insert_before(node, [cast, mul, add])
        return add.outputs[0]

    done = pack_attention(_rebias(fused_encoder, plus_ids), lambda name: True)
    assert not done.packed and all("values of 2 graph inputs" in why for _, why in done.skipped), done.skipped

    def from_input(model, node, bias):
        name = "position_bias"
        existing = next((v for v in model.graph.inputs if v.name == name), None)
        if existing is None:
            existing = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["batch", 1, 32, 32]))
            model.graph.inputs.append(existing)
        return existing

    done = pack_attention(_rebias(fused_encoder, from_input), lambda name: True)
    assert not done.packed and all("not a 2-D mask" in why for _, why in done.skipped), done.skipped


def test_a_layer_with_a_projection_kept_float_is_not_packed(fused_encoder):
    model = _copy(fused_encoder)
    first = _attentions(model)[0]
    kept = first.inputs[1].producer().name  # its key projection
    done = pack_attention(model, lambda name: name != kept)
    assert len(done.packed) == 1
    assert done.skipped == ((first.name, "not all of its Q/K/V projections are quantized"),)


def test_dynamic_int8_packs_the_encoder_into_qattention_with_the_unpacked_models_outputs(keras_encoder_onnx,
                                                                                      keras_encoder_data):
    model = Normalize()(load_model(keras_encoder_onnx)).model
    results = {pack: Quantize(mode="dynamic", smooth="off", guard="off", pack_attention=pack)(model)
               for pack in (True, False)}
    packed_ops, plain_ops = op_histogram(results[True].model), op_histogram(results[False].model)
    assert packed_ops["com.microsoft::QAttention"] == 2 and "com.microsoft::MultiHeadAttention" not in packed_ops
    assert plain_ops["com.microsoft::MultiHeadAttention"] == 2 and "com.microsoft::QAttention" not in plain_ops
    # Q/K/V now inside QAttention: 2 layers x (output projection + 2 FFN) MatMulInteger left
    assert packed_ops["MatMulInteger"] == 6 and plain_ops["MatMulInteger"] == 12
    assert results[True].quantized_op_types == results[False].quantized_op_types
    assert results[True].quantized_op_types["MatMul"] == 12
    choice = next(c for c in results[True].choices if c.setting == "pack_attention")
    assert choice.value == "2 QAttention"
    data = keras_encoder_data["val"]
    packed = Runner(results[True].model).run_dataset(data)["last_hidden_state"]
    plain = Runner(results[False].model).run_dataset(data)["last_hidden_state"]
    real = data.inputs["attention_mask"].astype(bool)
    scale = float(np.abs(plain[real]).max())
    assert float(np.abs(packed[real] - plain[real]).max()) <= 1e-4 * scale
    assert results[True].size_after <= results[False].size_after  # one weight scale set per layer, not three
