"""prune_transformer: heads, FFN neurons and whole layers on real exported encoders.

Default suite: the Keras/tf2onnx encoder end to end (fast) and the detection on both MiniLM
exports; the full MiniLM cuts (dynamo, TorchScript, after ``fuse``) are ``slow``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import onnx_compress as oc
from onnx_compress.errors import PassRefusedError, SettingError
from onnx_compress.model_io import check_model
from onnx_compress.passes import Normalize
from onnx_compress.passes.prune.transformer import PruneTransformer, find_structure
from onnx_compress.passes.prune.transformer.detect import prepare
from onnx_compress.passes.prune.transformer.layers import similarity, token_mask
from onnx_compress.passes.registry import pass_class
from onnx_compress.runtime import Runner, SessionSettings

CPU = SessionSettings(provider="cpu", intra_op_threads=2)


def _outputs(model, data) -> np.ndarray:
    runner = Runner(model, CPU)
    return np.asarray(runner.run_dataset(data)[runner.output_names[0]])


def _cosine(reference, candidate, data) -> np.ndarray:
    return similarity(_outputs(reference, data), _outputs(candidate, data), token_mask(data))


@pytest.fixture(scope="module")
def keras_model(keras_encoder_onnx):
    return Normalize()(oc.load_model(keras_encoder_onnx)).model


def _structure(model: ir.Model):
    work = model.clone()
    prepare(work)
    return find_structure(work)


# ------------------------------------------------------------------------------ Keras / tf2onnx


def test_keras_encoder_structure(keras_model):
    structure = _structure(keras_model)
    assert structure.form == "plain"
    assert [(layer.attention.heads, layer.attention.head_dim, layer.ffn.width) for layer in structure.layers] \
        == [(4, 16, 128), (4, 16, 128)]
    assert all(not layer.depth_reason for layer in structure.layers)
    # tf2onnx writes the head split as a constant [-1, 32, 4, 16] and the merge as [-1, 32, 64]
    kinds = sorted(kind for r in structure.layers[0].attention.rewrites for kind in r.positions.values())
    assert kinds == ["heads", "heads", "heads", "width"]


def test_keras_heads_ffn_layers(keras_model, keras_encoder_data):
    calib, val = keras_encoder_data["calib"], keras_encoder_data["val"]
    result = PruneTransformer(heads=0.5, ffn=0.25, layers=1, calibration=calib)(keras_model)
    assert result.modified
    check_model(result.model, full_check=True)
    statuses = sorted(layer.status for layer in result.layers)
    assert statuses == ["pruned", "removed"]
    pruned = next(layer for layer in result.layers if layer.status == "pruned")
    assert (pruned.heads_after, pruned.ffn_after, len(pruned.kept_heads)) == (2, 96, 2)
    assert result.params_after < result.params_before and result.macs_after < result.macs_before
    left = _structure(result.model)
    assert [(layer.attention.heads, layer.ffn.width) for layer in left.layers] == [(2, 96)]
    before, after = _outputs(keras_model, val), _outputs(result.model, val)
    assert before.shape == after.shape == (200, 32, 64)
    assert json.dumps(result.as_dict())  # the report serializes


def test_keras_contribution_beats_magnitude_and_reconstruction_helps(keras_model, keras_encoder_data):
    """Importance from the calibration data keeps more of the output than weight norms on this
    encoder, and the least-squares refit of the output projections raises it further."""
    calib, val = keras_encoder_data["calib"], keras_encoder_data["val"]
    scores = {}
    for name, settings in {"magnitude": {"importance": "magnitude"}, "contribution": {},
                           "reconstruct": {"reconstruct": True}}.items():
        result = PruneTransformer(heads=0.5, ffn=0.5, calibration=calib, **settings)(keras_model)
        scores[name] = float(_cosine(keras_model, result.model, val).mean())
    assert scores["contribution"] >= scores["magnitude"] - 0.005, scores
    assert scores["reconstruct"] > scores["contribution"] + 0.02, scores


def test_keras_layer_choice_by_skip_is_the_best_single_removal(keras_model, keras_encoder_data):
    calib, val = keras_encoder_data["calib"], keras_encoder_data["val"]
    result = PruneTransformer(layers=1, calibration=calib)(keras_model)
    removed = result.removed
    assert len(removed) == 1
    scores = {layer.index: layer.score for layer in result.layers}
    assert removed[0] == max(scores, key=lambda i: scores[i])
    # heads and neurons all kept: only the layer went
    assert all(layer.heads_after == 4 for layer in result.layers if layer.status != "removed")


def test_no_cut_is_unmodified_and_same_outputs(keras_model, keras_encoder_data):
    result = PruneTransformer(calibration=keras_encoder_data["calib"])(keras_model)
    assert not result.modified
    val = keras_encoder_data["val"].take(8)
    np.testing.assert_allclose(_outputs(result.model, val), _outputs(keras_model, val), atol=1e-6)


# ------------------------------------------------------------------------------ bad input


def test_bad_requests_give_one_line_errors(keras_model, keras_encoder_data):
    calib = keras_encoder_data["calib"]
    with pytest.raises(PassRefusedError, match="remove all 4 heads of layer 0"):
        PruneTransformer(heads=1.0, calibration=calib)(keras_model)
    with pytest.raises(PassRefusedError, match="remove all 2 encoder layers"):
        PruneTransformer(layers=2, calibration=calib)(keras_model)
    with pytest.raises(PassRefusedError, match="remove all 2 encoder layers"):
        PruneTransformer(layers=5, calibration=calib)(keras_model)
    with pytest.raises(PassRefusedError, match="calibration data"):
        PruneTransformer(heads=0.5)(keras_model)
    for bad in ({"heads": 1.5}, {"ffn": -0.1}, {"layers": -1}, {"layers": 1.5}, {"importance": "l2"},
                {"layer_importance": "random"}, {"round_to": 0}):
        with pytest.raises(SettingError):
            PruneTransformer(**bad)


def test_model_without_heads_is_refused():
    """A plain MLP: nothing that looks like attention; the error says so in one line."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    w = onnx.numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp", [x], [y], [w])
    model = ir.serde.deserialize_model(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    with pytest.raises(PassRefusedError, match="no transformer encoder layers") as caught:
        PruneTransformer(heads=0.5, importance="magnitude")(model)
    assert "\n" not in str(caught.value)


def test_registered_and_scaled():
    assert pass_class("prune_transformer") is PruneTransformer
    scaled = PruneTransformer(heads=0.5, ffn=0.4, layers=3).scaled(0.5)
    assert (scaled.settings.heads, scaled.settings.ffn, scaled.settings.layers) == (0.25, 0.2, 1)
    assert PruneTransformer.from_dict({"heads": 0.25, "layers": 1}).settings.layers == 1


# ------------------------------------------------------------------------------ CLI


def test_cli_prune_and_inspect(cli, keras_encoder_onnx, keras_encoder_data, tmp_path):
    calib = keras_encoder_data["calib"].save(tmp_path / "calib.npz")
    out = tmp_path / "pruned.onnx"
    done = cli("prune", keras_encoder_onnx, "-o", out, "--heads", "0.5", "--ffn", "0.5", "--layers", "1",
               "--data", calib, "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["mode"] == "transformer"
    assert sorted(layer["status"] for layer in payload["result"]["layers"]) == ["pruned", "removed"]
    assert payload["after"]["params"] < payload["before"]["params"]
    shown = cli("inspect", out, "--json")
    assert shown.returncode == 0, shown.stderr
    layers = json.loads(shown.stdout)["transformer"]["layers"]
    assert [(layer["heads"], layer["ffn"]) for layer in layers] == [(2, 64)]
    human = cli("inspect", keras_encoder_onnx)
    assert "encoder layer" in human.stdout and "4 x 16" in human.stdout
    bad = cli("prune", keras_encoder_onnx, "-o", tmp_path / "x.onnx", "--layers", "2", "--data", calib)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
    assert "remove all 2 encoder layers" in bad.stderr


# ------------------------------------------------------------------------------ MiniLM


@pytest.mark.parametrize("fixture", ["minilm_onnx", "minilm_ts_onnx"])
def test_minilm_structure_both_exports(fixture, request):
    model = oc.load_model(request.getfixturevalue(fixture))
    structure = _structure(model)
    assert structure.form == "plain"
    assert len(structure.layers) == 6
    for layer in structure.layers:
        assert (layer.attention.heads, layer.attention.head_dim, layer.ffn.width) == (12, 32, 1536)
        assert not layer.depth_reason, layer.depth_reason
    # the last layer's output is found from the op sequence joining the layers before it
    assert structure.layers[-1].output is not None


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["minilm_onnx", "minilm_ts_onnx"])
def test_minilm_cuts_both_exports(fixture, request, minilm_texts):
    model = Normalize()(oc.load_model(request.getfixturevalue(fixture))).model
    calib, val = minilm_texts["calib"].take(32), minilm_texts["val"].take(64)
    result = PruneTransformer(heads=0.25, ffn=0.25, layers=1, calibration=calib, calibration_samples=32,
                              layer_samples=16)(model)
    check_model(result.model, full_check=True)
    assert sum(layer.status == "removed" for layer in result.layers) == 1
    assert all(layer.heads_after == 9 and layer.ffn_after == 1152 for layer in result.layers
               if layer.status == "pruned")
    cosine = _cosine(model, result.model, val)
    assert _outputs(result.model, val).shape == _outputs(model, val).shape
    assert cosine.mean() > 0.7, cosine.mean()


@pytest.mark.slow
def test_minilm_after_fuse(minilm_onnx, minilm_texts):
    """The fused graph (MultiHeadAttention) is pruned through num_heads and its packed bias;
    the result matches pruning before fusing."""
    from onnx_compress.passes import Fuse

    model = Normalize()(oc.load_model(minilm_onnx)).model
    fused = Fuse(layer_norm="unfused")(model).model
    calib, val = minilm_texts["calib"].take(16), minilm_texts["val"].take(32)
    structure = _structure(fused)
    assert structure.form == "fused" and len(structure.layers) == 6
    after_fuse = PruneTransformer(heads=0.5, importance="magnitude")(fused)
    heads = [node.attributes.get_int("num_heads") for node in after_fuse.model.graph
             if node.op_type == "MultiHeadAttention"]
    assert heads == [6] * 6
    before_fuse = Fuse(layer_norm="unfused")(PruneTransformer(heads=0.5, importance="magnitude")(model).model).model
    np.testing.assert_allclose(_outputs(after_fuse.model, val), _outputs(before_fuse, val), atol=2e-4)
    del calib


def test_keras_global_head_ranking_keeps_a_head_per_layer(keras_model, keras_encoder_data):
    calib, val = keras_encoder_data["calib"], keras_encoder_data["val"]
    total = sum(layer.heads_before for layer in PruneTransformer(calibration=calib)(keras_model).layers)
    result = PruneTransformer(heads=0.75, head_scope="global", calibration=calib)(keras_model)
    kept = [layer.heads_after for layer in result.layers]
    assert sum(kept) == total - round(0.75 * total) and min(kept) >= 1, kept
    assert _cosine(keras_model, result.model, val).mean() > 0.3
    check_model(result.model, full_check=True)
    with pytest.raises(PassRefusedError, match="one head stays in each"):
        PruneTransformer(heads=1.0, head_scope="global", calibration=calib)(keras_model)
    with pytest.raises(SettingError, match="head_scope"):
        PruneTransformer(heads=0.5, head_scope="model")
