"""Skipping padded positions (passes/quantize/skip_padding.py) on the Keras/tf2onnx encoder: per-token
layers run on real tokens only, outputs equal on real tokens and 0 on padded ones; refusals when an
attention layer is not provably padding-masked or an output reads padded positions; and dynamic
int8 with it (the report says so, the outputs stay those of int8 without it)."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import pytest

from onnx_compress.model_io import load_model
from onnx_compress.passes import Fuse, Normalize, Quantize
from onnx_compress.passes.quantize.skip_padding import NODE_PREFIX, parity_problem, skip_padding
from onnx_compress.passes.quantize.attention_pack import pack_attention
from onnx_compress.runtime import Runner
from onnx_compress.runtime.metrics import cosine_per_sample
from onnx_compress.stats import op_histogram


@pytest.fixture(scope="module")
def fused_encoder(keras_encoder_onnx) -> ir.Model:
    """The Keras/tf2onnx encoder after ``fuse``: 2 MultiHeadAttention masked by ``attention_mask``."""
    return Fuse()(Normalize()(load_model(keras_encoder_onnx)).model).model


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _outputs(model: ir.Model, data) -> np.ndarray:
    return Runner(model).run_dataset(data)["last_hidden_state"]


@pytest.mark.parametrize("packed_attention", [False, True], ids=["MultiHeadAttention", "Attention"])
def test_per_token_layers_run_on_real_tokens_only_with_the_same_outputs(fused_encoder, keras_encoder_data,
                                                                        packed_attention):
    model = _copy(fused_encoder)
    if packed_attention:
        assert len(pack_attention(model, lambda name: True).packed) == 2
    reference = _copy(model)
    done = skip_padding(model)
    assert done.mask == "attention_mask" and not done.reason
    # per layer: the attention projections (Q/K/V and output with MultiHeadAttention, the output
    # one with Attention, whose Q/K/V are inside it), the FFN (Keras writes it as Tensordot:
    # Reshape to rows, MatMul, Reshape back; the Reshapes become the identity on packed rows), its
    # Gelu, the residual Sums and LayerNorms. Gathered: the word and position embeddings, each
    # attention's output; restored: each attention's inputs (3 or 1) and the graph output.
    tokens = collections.Counter(n.op_type for n in model.graph if (n.name or "").endswith("_tokens"))
    assert tokens["MatMul"] == (6 if packed_attention else 12) and tokens["LayerNormalization"] == 5
    assert tokens["Gelu"] == 2 and tokens["Identity"] == 8
    assert done.nodes == (26 if packed_attention else 32)
    assert (done.packs, done.unpacks) == (4, 3 if packed_attention else 7)
    added = collections.Counter(n.op_type for n in model.graph if (n.name or "").startswith(NODE_PREFIX))
    assert added["NonZero"] == 1 and added["CumSum"] == 1 and added["Gather"] == done.packs + done.unpacks
    assert parity_problem(reference, model, "attention_mask") is None
    data = keras_encoder_data["val"]
    real = data.inputs["attention_mask"].astype(bool)
    assert 0.2 < real.mean() < 0.9  # the data does have padding to skip
    expected, got = _outputs(reference, data), _outputs(model, data)
    scale = float(np.abs(expected[real]).max())
    assert float(np.abs(expected[real] - got[real]).max()) <= 1e-4 * scale
    assert np.all(got[~real] == 0)


def test_an_attention_without_a_mask_or_with_a_causal_bias_is_refused(fused_encoder):
    model = _copy(fused_encoder)
    first = next(n for n in model.graph if n.op_type == "MultiHeadAttention")
    first.replace_input_with(5, None)  # this layer now attends to padded keys
    done = skip_padding(model)
    assert done.nodes == 0 and "has no padding mask" in done.reason
    assert "NonZero" not in op_histogram(model)

    model = _copy(fused_encoder)
    for node in [n for n in model.graph if n.op_type == "MultiHeadAttention"]:
        seq = 32
        upper = ir.Value(name=f"{node.name}_causal",
                         const_value=ir.tensor(np.triu(np.full((seq, seq), -1e9, np.float32), k=1)[None, None]))
        model.graph.register_initializer(upper)
        add = ir.node("Add", [node.inputs[5], upper], outputs=[ir.Value(name=f"{node.name}_causal_bias")])
        model.graph.insert_before(node, add)
        node.replace_input_with(5, add.outputs[0])
    done = skip_padding(model)
    assert done.nodes == 0 and "not 0 on every kept key" in done.reason


def test_an_output_that_reads_padded_positions_fails_the_parity_check(fused_encoder):
    """A plain mean over every position (padded ones included) is not a per-token output: its value
    changes when padded positions become 0, and the check says so."""
    model = _copy(fused_encoder)
    hidden = model.graph.outputs[0]
    pool = ir.node("ReduceMean", [hidden], attributes={"axes": [1], "keepdims": 0},  # opset 17: axes attribute
                   outputs=[ir.Value(name="pooled", type=ir.TensorType(ir.DataType.FLOAT))])
    model.graph.append(pool)
    model.graph.outputs.append(pool.outputs[0])
    reference = _copy(model)
    assert skip_padding(model).nodes > 0
    problem = parity_problem(reference, model, "attention_mask")
    assert problem is not None and problem.startswith("output 1 changed"), problem


def test_dynamic_int8_skips_padding_and_says_so(keras_encoder_onnx, keras_encoder_data):
    model = Normalize()(load_model(keras_encoder_onnx)).model
    results = {skip: Quantize(mode="dynamic", smooth="off", guard="off", skip_padding=skip)(model)
               for skip in (True, False)}
    with_skip, without = results[True], results[False]
    assert op_histogram(with_skip.model)["NonZero"] == 1 and "NonZero" not in op_histogram(without.model)
    assert any(n.name.startswith(NODE_PREFIX) for n in with_skip.model.graph)
    choice = next(c for c in with_skip.choices if c.setting == "skip_padding")
    assert choice.value == "on (attention_mask)" and "0 at padded positions" in choice.reason
    assert not any(c.setting == "skip_padding" for c in without.choices)
    assert with_skip.quantized_op_types == without.quantized_op_types
    data = keras_encoder_data["val"]
    real = data.inputs["attention_mask"].astype(bool)
    got, plain = _outputs(with_skip.model, data), _outputs(without.model, data)
    assert np.all(got[~real] == 0) and not np.all(plain[~real] == 0)
    # on real tokens only the activation ranges differ (taken over real rows only): the two int8
    # models agree to int8 noise and are equally close to the float model
    cos = cosine_per_sample(plain[real], got[real])
    assert cos.mean() >= 0.9995 and cos.min() >= 0.998, (cos.mean(), cos.min())
    reference = _outputs(model, data)
    skipped = cosine_per_sample(reference[real], got[real]).mean()
    assert skipped >= cosine_per_sample(reference[real], plain[real]).mean() - 5e-4 and skipped >= 0.999


def test_a_mask_the_metrics_do_not_read_is_refused(fused_encoder):
    """Zeros at padded positions are invisible only to comparisons that know the padding mask: the
    metrics read it from an input named attention_mask, so a mask named otherwise is refused."""
    model = _copy(fused_encoder)
    next(v for v in model.graph.inputs if v.name == "attention_mask").name = "input_mask"
    done = skip_padding(model)
    assert done.nodes == 0 and "'input_mask'" in done.reason and "named 'attention_mask'" in done.reason


def test_a_batch_without_any_real_token_runs(fused_encoder):
    """No real token at all: the packed rows are empty, every per-token layer runs on 0 rows, and
    the output is 0 everywhere (the positions are all padded), not an error."""
    model = _copy(fused_encoder)
    assert skip_padding(model).nodes > 0
    ids = np.zeros((2, 32), np.int32)
    out = Runner(model).run({"input_ids": ids, "attention_mask": np.zeros((2, 32), np.int32)})[0]
    assert out.shape == (2, 32, 64) and np.all(out == 0)
