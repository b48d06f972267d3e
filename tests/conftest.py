"""Shared fixtures: the real digits data, the trained seed models and their ONNX exports.

Training and exporting happen once per test session (session-scoped fixtures) and are shared
by every test module, so the suite stays within its time budget on 2 cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "hardening"))  # large_model.py, fuzz_harness.py
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder for trained and exported models."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def digits_nchw():
    import onnx_compress as oc

    return oc.load_digits("NCHW")


@pytest.fixture(scope="session")
def digits_nhwc():
    import onnx_compress as oc

    return oc.load_digits("NHWC")


@pytest.fixture(scope="session")
def torch_seed(digits_nchw):
    """The seed PyTorch CNN trained on digits (eval mode)."""
    import torch

    torch.set_num_threads(2)
    from onnx_compress.samples import seed_torch_cnn

    torch.manual_seed(0)
    model = seed_torch_cnn.SimpleModel()
    seed_torch_cnn.train(model, digits_nchw.train, epochs=12, seed=0)
    return model


@pytest.fixture(scope="session")
def torch_seed_onnx(torch_seed, digits_nchw, artifacts) -> Path:
    """The trained seed PyTorch CNN exported to ONNX."""
    import torch

    import onnx_compress as oc

    path = artifacts / "torch_seed.onnx"
    oc.export_torch(torch_seed, torch.from_numpy(digits_nchw.test.take(1).inputs["input"]), path)
    return path


@pytest.fixture(scope="session")
def keras_seed(digits_nhwc):
    """The seed Keras CNN trained on digits (seeded before its weights are drawn, as the sample
    does: otherwise the initial weights depend on whatever drew random numbers earlier)."""
    import keras
    from onnx_compress.samples import seed_keras_cnn

    keras.utils.set_random_seed(0)
    model = seed_keras_cnn.build_model()
    seed_keras_cnn.train(model, digits_nhwc.train, epochs=10, seed=0)
    return model


@pytest.fixture(scope="session")
def keras_seed_file(keras_seed, artifacts) -> Path:
    path = artifacts / "keras_seed.keras"
    keras_seed.save(path)
    return path


@pytest.fixture(scope="session")
def keras_seed_onnx(keras_seed_file, digits_nhwc, artifacts) -> Path:
    """The trained seed Keras CNN (from its .keras file) exported to ONNX."""
    import onnx_compress as oc

    path = artifacts / "keras_seed.onnx"
    oc.export_keras(keras_seed_file, path, example_inputs=digits_nhwc.test.take(2).inputs["input"])
    return path


@pytest.fixture(scope="session")
def digits_files(digits_nchw, digits_nhwc, artifacts) -> dict[str, dict[str, Path]]:
    """The digits splits written as .npz, per layout: files['NCHW']['test'] etc."""
    return {
        "NCHW": digits_nchw.save(artifacts / "digits_nchw"),
        "NHWC": digits_nhwc.save(artifacts / "digits_nhwc"),
    }


def _run_cli(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 300):
    """Run the installed ``onnx-compress`` console script in a subprocess."""
    import subprocess

    script = Path(sys.executable).parent / "onnx-compress"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


@pytest.fixture(scope="session")
def cli():
    """``cli("inspect", path, "--json")`` -> CompletedProcess of the real console script."""
    return _run_cli


@pytest.fixture(scope="session")
def minilm_onnx(artifacts) -> Path:
    """The pretrained all-MiniLM-L6-v2 sentence embedder exported to ONNX (batch and sequence dynamic)."""
    from onnx_compress.samples import minilm

    path = artifacts / "minilm.onnx"
    minilm.export_minilm(path, sequence=64)
    return path


@pytest.fixture(scope="session")
def minilm_ts_onnx(artifacts) -> Path:
    """all-MiniLM-L6-v2's BERT encoder as most users export it: TorchScript exporter, opset 17,
    inputs input_ids/attention_mask, per-token output ``last_hidden_state`` (no pooling)."""
    from onnx_compress.samples import minilm

    return minilm.export_minilm_torchscript(artifacts / "minilm_torchscript.onnx", sequence=64)


@pytest.fixture(scope="session")
def keras_encoder_onnx(artifacts) -> Path:
    """A 2-layer BERT-style encoder built from Keras layers (MultiHeadAttention, LayerNormalization,
    erf-GELU FFN; seeded random weights) exported by tf2onnx: output ``last_hidden_state``."""
    from onnx_compress.samples import keras_encoder

    return keras_encoder.export_encoder(artifacts / "keras_encoder.onnx").path


@pytest.fixture(scope="session")
def keras_encoder_data():
    """Padded random token rows for :func:`keras_encoder_onnx`: {'calib': 200 rows, 'val': 200 rows}."""
    from onnx_compress.samples import keras_encoder

    return {"calib": keras_encoder.token_dataset(200, seed=1), "val": keras_encoder.token_dataset(200, seed=2)}


@pytest.fixture(scope="session")
def minilm_texts():
    """Tokenized real sentences: {'calib': Dataset(200), 'val': Dataset(200)} at sequence 64."""
    from onnx_compress.samples import minilm

    data = minilm.text_dataset(minilm.sentences(400), sequence=64)
    return {"calib": data.subset(slice(0, 200)), "val": data.subset(slice(200, 400))}