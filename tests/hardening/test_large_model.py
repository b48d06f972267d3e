"""Models over 2 GB: load, inspect, validate, bench, save with one external data file.

Marked `large` (out of the default run: it writes ~2.3 GB twice); run with `make test-large`.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_compress.data import Dataset
from onnx_compress.model_io import load_model, model_files, save_model, weights_nbytes
from onnx_compress.runtime import Runner, SessionSettings, benchmark, validate
from onnx_compress.stats import model_stats

pytestmark = pytest.mark.large


@pytest.fixture(scope="module")
def large_model(tmp_path_factory):
    from large_model import write_large_mlp

    return write_large_mlp(tmp_path_factory.mktemp("large"))


@pytest.fixture(scope="module")
def large_data(large_model, tmp_path_factory):
    rng = np.random.default_rng(0)
    return Dataset({"x": rng.standard_normal((4, 8192)).astype(np.float32)}).save(
        tmp_path_factory.mktemp("large_data") / "x.npz")


def test_load_inspect_validate_bench(large_model, large_data):
    model = load_model(large_model)
    assert weights_nbytes(model) > 2**31
    stats = model_stats(large_model)
    assert stats.params == 2 * 8192 * 36864 + 36864 + 8192
    assert stats.macs == 2 * 8192 * 36864
    assert stats.size_bytes > 2**31
    score = validate(large_model, large_model, large_data, "max_abs", settings=SessionSettings(provider="cpu"))
    assert score.drop == 0.0
    latency = benchmark(Runner(large_model, SessionSettings(provider="cpu")),
                        {"x": np.zeros((1, 8192), np.float32)}, runs=2, warmup=1)
    assert latency.runs == 2


def test_save_writes_one_relative_data_file(large_model, tmp_path):
    out = save_model(load_model(large_model), tmp_path / "copy.onnx", protected=model_files(large_model))
    files = model_files(out)
    assert [f.name for f in files] == ["copy.onnx", "copy.onnx.data"]
    proto = onnx.load(out, load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"copy.onnx.data"}
    assert out.stat().st_size < 10 << 20  # the graph is small; the weights are in the data file


def _runs_in_ort(path, width: int = 8192) -> np.ndarray:
    runner = Runner(path, SessionSettings(provider="cpu"))
    (out,) = runner.run({"x": np.ones((2, width), np.float32)})
    return out


def test_dynamic_quantization_of_a_large_model(large_model, tmp_path):
    from onnx_compress.passes import Normalize, Quantize

    model = Normalize()(load_model(large_model)).model
    result = Quantize(mode="dynamic", guard="off")(model)
    assert result.modified
    out = save_model(result.model, tmp_path / "q.onnx", protected=model_files(large_model))
    size = sum(f.stat().st_size for f in model_files(out))
    assert size < 0.3 * 2.25 * 2**30  # int8 weights: about a quarter
    reference = _runs_in_ort(large_model)
    got = _runs_in_ort(out)
    cos = (reference * got).sum() / (np.linalg.norm(reference) * np.linalg.norm(got))
    assert cos > 0.99


def test_structured_pruning_of_a_large_model(large_model, tmp_path):
    from onnx_compress.passes import PruneStructured

    result = PruneStructured(ratio=0.5)(load_model(large_model))
    assert result.modified
    out = save_model(result.model, tmp_path / "p.onnx", protected=model_files(large_model))
    stats = model_stats(out)
    assert stats.params < 0.55 * (2 * 8192 * 36864)
    assert _runs_in_ort(out).shape == (2, 8192)
