"""The MiniLM training sentences: at least 20,000 real sentences, none of the held-out ones."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_training_sentences_are_many_distinct_and_held_apart():
    from onnx_compress.samples import minilm
    from onnx_compress.samples import minilm_corpus

    train = minilm_corpus.training_sentences(20000)
    assert len(train) == len(set(train)) == 20000
    held_out = set(minilm.sentences())
    assert not held_out & set(train)
    assert all(s[0].isupper() and s[-1] in ".!?" and 6 <= len(s.split()) <= 48 for s in train)
