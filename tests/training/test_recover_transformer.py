"""Recovery of pruned transformer encoders: per-layer hidden-state matching, batches trimmed to
their real length, and a held-out gain on a heads + FFN + layer cut."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch

import onnx_compress as oc
from onnx_compress.passes import Normalize
from onnx_compress.passes.prune.transformer import PruneTransformer
from onnx_compress.passes.prune.transformer.layers import similarity, token_mask
from onnx_compress.runtime import Runner
from onnx_compress.training.bridge import GraphModule
from onnx_compress.training.recover import RecoverySettings, _Sequences, recover


def _hidden(model, data, names):
    """The named values of ``model`` on ``data`` (ONNX Runtime, the values added as outputs)."""
    copy = model.clone()
    values = {str(v.name): v for node in copy.graph for v in node.outputs if v is not None}
    copy.graph.outputs.extend(values[n] for n in names if n not in {str(o.name) for o in copy.graph.outputs})
    runner = Runner(copy)
    return dict(zip(runner.output_names, runner.run({n: data.inputs[n] for n in [spec.name for spec in runner.input_specs]})))


def test_layer_matching_recovers_a_keras_encoder_cut_on_held_out_data(keras_encoder_onnx):
    from onnx_compress.samples import keras_encoder

    teacher = Normalize()(oc.load_model(keras_encoder_onnx)).model
    calib, val, test = (keras_encoder.token_dataset(200, seed=s) for s in (1, 2, 4))
    train = keras_encoder.token_dataset(256, seed=3)
    student = PruneTransformer(heads=0.5, ffn=0.5, calibration=calib)(teacher).model
    settings = RecoverySettings(epochs=3, lr=3e-3, batch_size=32, match=("layers",), patience=3, device="cpu")
    model, result = recover(student, teacher, train, val, settings, progress=False)
    matched = [name for name, kind in result.losses.items() if name != "last_hidden_state"]
    # both encoder layers' outputs are matched against the teacher's values of those names, per real
    # token (the mask input is found); the second layer's output is the graph output itself
    assert len(matched) == 1 and all(result.losses[n] == "token" for n in matched), result.losses
    assert result.improved and result.after > result.before + 0.02, result.summary()
    assert result.parity < 1e-4
    mask = token_mask(test)
    reference = _hidden(teacher, test, matched)
    before, after = _hidden(student, test, matched), _hidden(model, test, matched)
    for name in ["last_hidden_state", *matched]:
        gain = similarity(reference[name], after[name], mask).mean() - similarity(reference[name], before[name], mask).mean()
        assert gain > 0, (name, gain)  # every matched layer moved towards the teacher on held-out rows


def test_trimmed_batches_compute_what_full_length_batches_do(minilm_onnx, minilm_texts):
    model = Normalize()(oc.load_model(minilm_onnx)).model
    data = minilm_texts["val"].take(16)
    sequences = _Sequences([model], data, "attention_mask", enabled=True)
    assert sequences.names == ["input_ids", "attention_mask"] and sequences.full == 64
    lengths = sequences.lengths(data)
    np.testing.assert_array_equal(lengths, data.inputs["attention_mask"].sum(1))  # right-padded sentences
    index = np.arange(16)
    module = GraphModule(model)
    with torch.no_grad():
        full = module(**{n: data.inputs[n] for n in module.input_names})["embedding"].numpy()
        short = sequences.feeds(data, index, module.input_names, lengths)
        assert short["input_ids"].shape == (16, int(lengths.max())) < (16, 64)
        trimmed = module(**short)["embedding"].numpy()
    np.testing.assert_allclose(trimmed, full, atol=1e-5)
    # batches of similar lengths: each covers all samples once and is far less padded than random ones
    rng = np.random.default_rng(0)
    all_lengths = sequences.lengths(minilm_texts["val"])
    bucketed = _Sequences.epoch(200, 8, rng, all_lengths, bucket=True)
    plain = _Sequences.epoch(200, 8, rng, all_lengths, bucket=False)
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(200))
    padded = [sum(len(b) * all_lengths[b].max() for b in batches) for batches in (bucketed, plain)]
    assert padded[0] < 0.8 * padded[1], padded
    # a graph with a fixed sequence length is never trimmed
    fixed = model.clone()
    for value in fixed.graph.inputs:
        value.shape = ir.Shape([value.shape[0], 64])
    assert _Sequences([fixed], data, "attention_mask", enabled=True).names == []
