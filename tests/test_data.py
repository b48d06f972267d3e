"""Data sets: npz round trip, checks against a model's inputs, the digits splits."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_compress as oc
from onnx_compress.data import Dataset, InputSpec, load_data, synthetic_inputs
from onnx_compress.errors import DataError

SPEC = [InputSpec("input", np.dtype("float32"), ("batch", 1, 28, 28))]


def test_npz_round_trip_with_labels(tmp_path):
    data = Dataset({"input": np.zeros((5, 1, 28, 28), np.float32)}, labels=np.arange(5))
    loaded = load_data(data.save(tmp_path / "d.npz"))
    assert loaded.names == ["input"] and len(loaded) == 5
    np.testing.assert_array_equal(loaded.labels, np.arange(5))
    loaded.check_against(SPEC)


def test_missing_input_names_the_missing_and_the_expected():
    data = Dataset({"pixels": np.zeros((2, 1, 28, 28), np.float32)})
    with pytest.raises(DataError, match=r"missing model input\(s\) \['input'\].*input: float32\[batchx1x28x28\].*\['pixels'\]"):
        data.check_against(SPEC)


def test_wrong_dtype_and_shape():
    with pytest.raises(DataError, match="dtype float64.*expects float32"):
        Dataset({"input": np.zeros((2, 1, 28, 28))}).check_against(SPEC)
    with pytest.raises(DataError, match=r"axis 2 must be 28"):
        Dataset({"input": np.zeros((2, 1, 27, 28), np.float32)}).check_against(SPEC)
    with pytest.raises(DataError, match="rank 3"):
        Dataset({"input": np.zeros((2, 28, 28), np.float32)}).check_against(SPEC)


def test_malformed_data_sets(tmp_path):
    with pytest.raises(DataError, match="empty"):
        Dataset({"input": np.zeros((0, 3), np.float32)})
    with pytest.raises(DataError, match="disagree"):
        Dataset({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})
    with pytest.raises(DataError, match="labels must be"):
        Dataset({"a": np.zeros((2, 3))}, labels=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="not found"):
        load_data(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", input=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="not a readable .npz"):  # pickles are never loaded
        load_data(tmp_path / "obj.npz")


def test_iterable_of_batches_is_concatenated():
    chunks = [{"x": np.ones((2, 3), np.float32), "labels": np.array([0, 1])} for _ in range(3)]
    data = load_data(chunks)
    assert len(data) == 6 and data.labels.tolist() == [0, 1] * 3
    assert [len(b["x"]) for b in data.batches(4)] == [4, 2]


def test_synthetic_inputs_follow_specs_and_conventions():
    specs = [
        InputSpec("input_ids", np.dtype("int64"), ("batch", "sequence")),
        InputSpec("attention_mask", np.dtype("int64"), ("batch", "sequence")),
        InputSpec("token_type_ids", np.dtype("int64"), ("batch", "sequence")),
    ]
    feeds = synthetic_inputs(specs, batch=4, dims={"sequence": 16})
    assert feeds["input_ids"].shape == (4, 16) and feeds["input_ids"].max() < 100
    assert (feeds["attention_mask"] == 1).all() and (feeds["token_type_ids"] == 0).all()
    with pytest.raises(DataError, match="--dim sequence=64"):
        synthetic_inputs(specs, batch=1)


def test_digits_splits_are_disjoint_stratified_and_shaped(digits_nchw, digits_nhwc):
    sizes = [len(getattr(digits_nchw, n)) for n in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes[0] > 1100
    # a 0.5-point budget must allow one net error on the validation split
    assert sizes[1] >= 200 and sizes[2] >= 350
    assert len(digits_nchw.calib) >= 250
    assert digits_nchw.train.inputs["input"].shape[1:] == (1, 28, 28)
    assert digits_nhwc.train.inputs["input"].shape[1:] == (28, 28, 1)
    x = digits_nchw.train.inputs["input"]
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    # same seed -> the same samples in both layouts
    np.testing.assert_array_equal(digits_nchw.test.inputs["input"][:, 0], digits_nhwc.test.inputs["input"][..., 0])
    # disjoint: no validation or test image is used to train or calibrate; calib is drawn from train
    rows = {name: {row.tobytes() for row in getattr(digits_nchw, name).inputs["input"]}
            for name in ("train", "calib", "val", "test")}
    assert rows["calib"] <= rows["train"]
    assert not (rows["train"] & rows["val"]) and not (rows["train"] & rows["test"]) and not (rows["val"] & rows["test"])
    for part in (digits_nchw.train, digits_nchw.calib, digits_nchw.val, digits_nchw.test):
        assert set(np.unique(part.labels)) == set(range(10))


def test_upscale_preserves_corners_and_interpolates():
    img = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    up = oc.datasets.upscale_bilinear(img, 3)
    np.testing.assert_allclose(up[0], [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])
