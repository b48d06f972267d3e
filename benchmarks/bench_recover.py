"""Recovery training on all-MiniLM-L6-v2: FFN cuts with and without recovery, side by side with int8 only.

Run:  python -m benchmarks recover [--ratios 0.5] [--minutes 12] [--export dynamo|torchscript]

Per FFN cut ratio: ``prune_structured`` (least-squares reconstruction on the calibration
sentences) -> recovery training from the fp32 model on ``--train-count`` sentences of
``samples/minilm_corpus.py`` (package docstrings, none of the calibration/validation/test
sentences) for at most ``--minutes`` -> the int8 steps of the ``small`` preset (4-bit embedding
table, then ``quantize: auto``). The int8-only row applies the same int8 steps to the fp32
model. Quality: cosine to the fp32 outputs on 200 held-out TEST sentences (the embedding for the
dynamo export; per real token for the TorchScript export's ``last_hidden_state``); recovery's
early stopping uses 200 other (validation) sentences. Speed: all models in one round-robin run
(``compare_many``), batch 1 and 8, sequence 64. Writes ``<out>/recover.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks import environment, write_results

ROOT = Path(__file__).resolve().parents[1]

INT8_STEPS = {"name": "int8 steps of small", "passes": [
    {"quantize": {"mode": "weight_only", "op_types": ["Gather"], "block_size": 128, "guard": "warn"}},
    {"quantize": {"mode": "auto"}},
]}


def _cosine(expected: Any, got: Any, mask: Any) -> tuple[float, float]:
    import numpy as np

    e, g = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    cos = (e * g).sum(-1) / np.maximum(np.linalg.norm(e, axis=-1) * np.linalg.norm(g, axis=-1), 1e-12)
    if cos.ndim == 2:
        real = mask.astype(bool)
        per_sentence = (cos * real).sum(1) / real.sum(1)
        return float(cos[real].mean()), float(per_sentence.min())
    return float(cos.mean()), float(cos.min())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5])
    parser.add_argument("--minutes", type=float, default=12.0, help="training time per ratio (default 12)")
    parser.add_argument("--train-count", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--export", choices=["dynamo", "torchscript"], default="dynamo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "benchmarks")
    args = parser.parse_args(argv)

    from onnx_compress.samples import minilm
    from onnx_compress.samples import minilm_corpus
    import torch

    from onnx_compress.model_io import load_model, save_model
    from onnx_compress.passes.normalize import Normalize
    from onnx_compress.passes.prune.prune_structured_pass import PruneStructured
    from onnx_compress.pipeline import PipelineSettings, compress
    from onnx_compress.runtime import Runner, SessionSettings, compare_many
    from onnx_compress.stats import size_on_disk
    from onnx_compress.table import format_table
    from onnx_compress.training.recover import RecoverySettings, recover

    torch.set_num_threads(args.threads)
    folder = args.out.resolve() / "recover" / args.export
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "minilm.onnx"
    if not fp32.exists():
        if args.export == "dynamo":
            minilm.export_minilm(fp32, sequence=64)
        else:
            minilm.export_minilm_torchscript(fp32, sequence=64)
    tokenizer = minilm.load_tokenizer()
    data = minilm.text_dataset(minilm.sentences(600), sequence=64, tokenizer=tokenizer)
    calib, val, test = (data.subset(slice(a, a + 200)) for a in (0, 200, 400))
    train = minilm.text_dataset(minilm_corpus.training_sentences(args.train_count), sequence=64, tokenizer=tokenizer)
    session = SessionSettings(provider="cpu", intra_op_threads=args.threads)
    settings = PipelineSettings(session=session, bench_runs=10)
    output = Runner(fp32, session).output_names[0]
    expected = Runner(fp32, session).run_dataset(test)[output]
    mask = test.inputs["attention_mask"]

    def quality(path: Path) -> tuple[float, float]:
        return _cosine(expected, Runner(path, session).run_dataset(test)[output], mask)

    def int8(src: Path, name: str) -> tuple[Path, float]:
        start = time.perf_counter()
        outcome = compress(src, INT8_STEPS, calib=calib, val=val, metric="cosine", settings=settings)
        return outcome.save(folder / f"{name}.onnx"), time.perf_counter() - start

    rows: dict[str, dict[str, Any]] = {"fp32": {"path": fp32}}
    path, seconds = int8(fp32, "int8_only")
    rows["int8 only (small's int8 steps)"] = {"path": path, "seconds": seconds}
    normalized = Normalize()(load_model(fp32)).model
    for ratio in args.ratios:
        cut = PruneStructured(ratio=ratio, reconstruct=True, calibration=calib)(normalized).model
        cut_path = save_model(cut, folder / f"ffn{ratio:g}.onnx")
        rows[f"FFN -{ratio:.0%} (LS reconstruct)"] = {"path": cut_path, "speed": False}
        start = time.perf_counter()
        recovered, result = recover(cut, normalized, train, val, RecoverySettings(
            epochs=50, lr=args.lr, batch_size=args.batch_size, max_minutes=args.minutes, patience=50), progress=False)
        rec_path = save_model(recovered, folder / f"ffn{ratio:g}_recovered.onnx")
        rows[f"FFN -{ratio:.0%} + recovered"] = {"path": rec_path, "speed": False, "seconds": time.perf_counter() - start,
                                                  "recovery": result.as_dict()}
        path, seconds = int8(rec_path, f"ffn{ratio:g}_recovered_int8")
        rows[f"FFN -{ratio:.0%} + recovered + int8"] = {"path": path, "seconds": seconds}
    for row in rows.values():
        row["cosine_mean"], row["cosine_min"] = quality(row["path"])
        row["size_bytes"] = size_on_disk(row["path"])
        row["smaller"] = rows["fp32"]["size_bytes"] / row["size_bytes"] if "size_bytes" in rows["fp32"] else 1.0
    timed = [name for name, row in rows.items() if row.get("speed", True)]
    for batch, runs in ((1, 60), (8, 30)):
        medians = [lat.median_ms for lat in compare_many([rows[n]["path"] for n in timed], test.take(batch).inputs,
                                                         runs=runs, settings=session)]
        for name, median in zip(timed, medians):
            rows[name][f"speedup_b{batch}"] = medians[0] / median
    print(f"\nall-MiniLM-L6-v2 ({args.export} export; 200 held-out test sentences, sequence 64; speed vs fp32 in one "
          "round-robin run)")
    print(format_table(["model", "cosine mean", "cosine min", "smaller", "speed b1", "speed b8", "train s"], [
        [name, f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}", f"{r['smaller']:.2f}x",
         f"{r['speedup_b1']:.2f}x" if "speedup_b1" in r else "-", f"{r['speedup_b8']:.2f}x" if "speedup_b8" in r else "-",
         f"{r['recovery']['seconds']:.0f}" if "recovery" in r else "-"] for name, r in rows.items()]))
    for name, row in rows.items():
        if "recovery" in row:
            print(f"  {name}: " + ", ".join(f"epoch {h['epoch']}: cos {h['metric']:.4f}" for h in row["recovery"]["history"]))
        row["path"] = str(row["path"])
    write_results(args.out.resolve(), "recover", {"environment": environment(), "export": args.export, "rows": rows,
                                                  "minutes": args.minutes, "train_sentences": len(train)})
    return 0
