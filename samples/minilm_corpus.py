"""Unlabeled English sentences for recovery training of the MiniLM sample, built offline.

Run:  python samples/minilm_corpus.py [--count 20000]

:func:`training_sentences` (:mod:`onnx_compress.samples.minilm_corpus`, shared with the tests and
benchmarks) reads the docstrings of the Python files that installed packages
ship (the standard library, numpy, torch, transformers, scipy, scikit-learn, ...) with ``ast``
(nothing is imported or run), splits them into sentences and keeps those that read as prose:
6-48 words, a capital first letter, a final ``.``/``!``/``?``, mostly alphabetic words, no code
markers (``>>>``, ``::``, backticks, ``=``, brackets). Files are read in sorted order, so the
set is deterministic for the installed versions. Every sentence of
:func:`minilm.sentences` (the calibration / validation / test sentences the tests and
benchmarks draw from the standard library's docstrings) is excluded, so training never sees them.
"""

from __future__ import annotations

import argparse

from onnx_compress.samples.minilm_corpus import training_sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args()
    sentences = training_sentences(args.count)
    print(f"{len(sentences)} sentences; e.g.:")
    for sentence in sentences[:: max(1, len(sentences) // 8)]:
        print(" -", sentence)


if __name__ == "__main__":
    main()
