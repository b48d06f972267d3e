"""A BERT-style encoder written in Keras and exported by tf2onnx: a transformer from another converter.

``samples/keras_encoder.py`` exports it with calibration / validation data; the tests' fixtures
build it from here. keras is required inside the functions that build it.

:func:`build_encoder` builds a small BERT-style encoder with Keras' own layers
(``Embedding`` for tokens and positions, ``keras.layers.MultiHeadAttention`` with the padding
mask, ``LayerNormalization`` after each residual, a GELU feed-forward block), inputs
``input_ids`` / ``attention_mask`` (int32 in Keras, as tokenizers give them), output the
per-token hidden states ``last_hidden_state``. Its weights are drawn from a fixed seed (no
download): the graph tf2onnx writes for it — MatMul + Add projections, a Reshape/Transpose per
head split, an additive mask built from ``attention_mask`` — is what passes must handle on
TensorFlow-born transformers; the numbers do not need trained weights.

:func:`export_encoder` exports it with :func:`onnx_compress.export_keras` (tf2onnx, parity
checked at two batch sizes). :func:`token_dataset` draws token ids with padding.
"""

from __future__ import annotations

import os

import numpy as np

from onnx_compress.data import Dataset
from onnx_compress.optional import require

__all__ = ["build_encoder", "export_encoder", "token_dataset"]


def build_encoder(*, vocab: int = 1000, sequence: int = 32, hidden: int = 64, heads: int = 4,
                  ffn: int = 128, layers: int = 2, seed: int = 0):
    """A Keras functional BERT-style encoder (post-norm, GELU FFN) with a padding mask."""
    keras = require("keras", "the Keras encoder sample")

    keras.utils.set_random_seed(seed)
    input_ids = keras.Input((sequence,), dtype="int32", name="input_ids")
    attention_mask = keras.Input((sequence,), dtype="int32", name="attention_mask")
    tokens = keras.layers.Embedding(vocab, hidden, name="word_embeddings")(input_ids)
    position_ids = keras.ops.cumsum(keras.ops.ones_like(input_ids), axis=1) - 1  # 0, 1, 2, ... per row
    positions = keras.layers.Embedding(sequence, hidden, name="position_embeddings")(position_ids)
    x = keras.layers.LayerNormalization(epsilon=1e-12, name="embeddings_norm")(tokens + positions)
    mask = keras.ops.cast(attention_mask[:, None, :], "bool")  # [batch, 1 (queries), keys]
    for i in range(layers):
        attended = keras.layers.MultiHeadAttention(heads, hidden // heads, name=f"layer{i}_attention")(
            x, x, attention_mask=mask)
        x = keras.layers.LayerNormalization(epsilon=1e-12, name=f"layer{i}_attention_norm")(x + attended)
        inner = keras.layers.Dense(ffn, name=f"layer{i}_ffn_in")(x)
        # erf GELU written out, as TF BERTs do (Keras' own "gelu" uses Erfc, which tf2onnx cannot convert)
        inner = 0.5 * inner * (1.0 + keras.ops.erf(inner / np.sqrt(2.0).astype(np.float32)))
        outer = keras.layers.Dense(hidden, name=f"layer{i}_ffn_out")(inner)
        x = keras.layers.LayerNormalization(epsilon=1e-12, name=f"layer{i}_ffn_norm")(x + outer)
    return keras.Model([input_ids, attention_mask], x, name="keras_encoder")


def token_dataset(count: int, *, vocab: int = 1000, sequence: int = 32, seed: int = 0,
                  min_length: int = 4) -> Dataset:
    """``count`` rows of random token ids, each padded after a random length (id 0, mask 0)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, sequence + 1, size=count)
    ids = rng.integers(1, vocab, size=(count, sequence))
    mask = (np.arange(sequence)[None, :] < lengths[:, None]).astype(np.int32)
    return Dataset({"input_ids": (ids * mask).astype(np.int32), "attention_mask": mask})


def export_encoder(path: str | os.PathLike[str], **build: int):
    """Build :func:`build_encoder` and export it to ONNX with tf2onnx (parity-checked)."""
    import onnx_compress as oc

    model = build_encoder(**build)
    sequence = build.get("sequence", 32)
    example = token_dataset(2, vocab=build.get("vocab", 1000), sequence=sequence)
    return oc.export_keras(model, path, input_names=["input_ids", "attention_mask"],
                           output_names=["last_hidden_state"], example_inputs=example.inputs)
