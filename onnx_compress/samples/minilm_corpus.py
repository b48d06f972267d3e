"""Unlabeled English sentences for recovery training of the MiniLM sample, built offline.

``samples/minilm_corpus.py`` prints a sample of them; the recovery tests and benchmarks train on them.

:func:`training_sentences` reads the docstrings of the Python files that installed packages
ship (the standard library, numpy, torch, transformers, scipy, scikit-learn, ...) with ``ast``
(nothing is imported or run), splits them into sentences and keeps those that read as prose:
6-48 words, a capital first letter, a final ``.``/``!``/``?``, mostly alphabetic words, no code
markers (``>>>``, ``::``, backticks, ``=``, brackets). Files are read in sorted order, so the
set is deterministic for the installed versions. Every sentence of
:func:`onnx_compress.samples.minilm.sentences` (the calibration / validation / test sentences the tests and
benchmarks draw from the standard library's docstrings) is excluded, so training never sees them.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

__all__ = ["training_sentences", "SOURCES"]

#: packages whose docstrings are read, in this order (missing ones are skipped)
SOURCES = ("numpy", "scipy", "sklearn", "torch", "transformers", "pandas", "matplotlib", "keras", "onnx",
           "setuptools", "pip")
_CODE = re.compile(r">>>|::|`|=|\[|\]|\{|\}|\\|https?:|\(\)|__|\w\.\w+\(|\w_\w")
_WORD = re.compile(r"^[A-Za-z][a-z]*[,;:]?$|^[a-z]+[.!?]$")


def _roots() -> Iterator[Path]:
    yield Path(sysconfig.get_paths()["stdlib"])
    for name in SOURCES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            yield Path(next(iter(spec.submodule_search_locations)))


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _prose(sentence: str, min_words: int, max_words: int) -> bool:
    words = sentence.split()
    if not min_words <= len(words) <= max_words or not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    if _CODE.search(sentence):
        return False
    return sum(bool(_WORD.match(w)) for w in words) >= 0.85 * len(words)


def training_sentences(count: int = 20000, *, min_words: int = 6, max_words: int = 48) -> list[str]:
    """``count`` distinct prose sentences from package docstrings, none of :func:`minilm.sentences`."""
    from onnx_compress.samples.minilm import sentences

    excluded = set(sentences())
    seen: set[str] = set()
    found: list[str] = []
    for root in _roots():
        for path in sorted(root.rglob("*.py")):
            if "test" in path.parts[-2].lower() or "site-packages" in path.relative_to(root).parts:
                continue
            for doc in _docstrings(path):
                # paragraphs only (not parameter lists, tables or examples), joined across line breaks
                for paragraph in re.split(r"\n\s*\n", doc):
                    if re.match(r"\s*(Parameters|Returns|Examples?|Raises|Args|See Also|Notes)\b", paragraph):
                        continue
                    text = re.sub(r"\s+", " ", paragraph).strip()
                    for sentence in re.split(r"(?<=[.!?])\s+", text):
                        if sentence in seen or sentence in excluded or not _prose(sentence, min_words, max_words):
                            continue
                        seen.add(sentence)
                        found.append(sentence)
                        if len(found) >= count:
                            return found
    if len(found) < count:
        raise RuntimeError(f"only {len(found)} sentences found in the installed packages (wanted {count})")
    return found
