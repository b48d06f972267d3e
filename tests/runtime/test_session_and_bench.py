"""Sessions, validation of real models, and the side-by-side benchmark's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_compress as oc
from onnx_compress.errors import DataError, RuntimeSessionError, SettingError
from onnx_compress.runtime import Runner, SessionSettings, compare, cuda_available, resolve_providers


def test_auto_provider_falls_back_to_cpu_and_says_so(caplog):
    caplog.set_level("INFO")
    providers = resolve_providers("auto")
    assert providers[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in providers) == cuda_available()
    assert "provider auto ->" in caplog.text
    if not cuda_available():
        with pytest.raises(SettingError, match="onnxruntime-gpu"):
            resolve_providers("cuda")


def test_settings_are_validated():
    with pytest.raises(SettingError, match="intra_op_threads"):
        SessionSettings(intra_op_threads=0)
    with pytest.raises(SettingError, match="provider"):
        SessionSettings(provider="tpu")  # type: ignore[arg-type]


def test_validate_a_model_against_itself_and_a_different_model(torch_seed_onnx, keras_seed_onnx, digits_files):
    test_nchw = digits_files["NCHW"]["test"]
    same = oc.validate(torch_seed_onnx, torch_seed_onnx, test_nchw, "top1")
    assert same.drop == 0.0 and same.details["agreement"] == 100.0 and same.reference > 90.0
    cos = oc.validate(torch_seed_onnx, torch_seed_onnx, test_nchw, "cosine")
    assert cos.candidate == pytest.approx(1.0) and cos.details["min"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="axis 1 must be 28"):  # NCHW data into the NHWC model
        oc.validate(keras_seed_onnx, keras_seed_onnx, test_nchw)


def test_runtime_errors_are_wrapped(torch_seed_onnx):
    runner = Runner(torch_seed_onnx, SessionSettings(provider="cpu", intra_op_threads=1))
    with pytest.raises(RuntimeSessionError, match="ONNX Runtime failed"):
        runner.run({"input": np.zeros((1, 1, 20, 20), np.float32)})
    with pytest.raises(RuntimeSessionError, match="could not load"):
        Runner(b"not a model")


def test_compare_interleaves_equal_run_counts(torch_seed_onnx):
    feeds = {"input": np.zeros((2, 1, 28, 28), np.float32)}
    result = compare(torch_seed_onnx, torch_seed_onnx, feeds, runs=7, warmup=1,
                     settings=SessionSettings(provider="cpu", intra_op_threads=1))
    assert result.a.runs == result.b.runs == 7 and result.a.batch == 2
    assert result.a.p90_ms >= result.a.median_ms >= result.a.min_ms > 0
    assert result.speedup == pytest.approx(result.a.median_ms / result.b.median_ms)
    assert result.a.throughput == pytest.approx(2 / (result.a.median_ms / 1e3))
    with pytest.raises(SettingError, match="runs"):
        compare(torch_seed_onnx, torch_seed_onnx, feeds, runs=0)


def test_compare_many_times_every_model_in_settled_blocks(torch_seed_onnx):
    from onnx_compress.runtime import compare_many

    feeds = {"input": np.zeros((1, 1, 28, 28), np.float32)}
    settings = SessionSettings(provider="cpu", intra_op_threads=1)
    runner = Runner(torch_seed_onnx, settings)
    calls = []
    original = runner.run
    runner.run = lambda feeds, *a, **k: (calls.append(1), original(feeds, *a, **k))[1]  # type: ignore[method-assign]
    latencies = compare_many([torch_seed_onnx, runner], feeds, runs=15, warmup=1, settle_ms=5.0, settings=settings)
    # 10 rounds of ceil(15 / 10) = 2 timed calls each; before each block, untimed calls for 5 ms
    assert [lat.runs for lat in latencies] == [20, 20]
    assert len(calls) > 1 + 20 + 10  # warmup + timed + more than one settling call per round
    single = compare_many([torch_seed_onnx, runner], feeds, runs=4, warmup=0, settle_ms=0.0, rounds=1)
    assert [lat.runs for lat in single] == [4, 4]
    with pytest.raises(SettingError, match="rounds"):
        compare_many([torch_seed_onnx], feeds, runs=4, rounds=0)
