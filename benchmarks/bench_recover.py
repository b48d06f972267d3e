"""Recovery training on all-MiniLM-L6-v2: transformer cuts with and without recovery, side by side with int8 only.

Run:  python -m benchmarks recover [--cuts "FFN 50 %" "layers 6 -> 4"] [--minutes 20] [--export dynamo|torchscript]
                                   [--lr 3e-4] [--batch-size 16] [--match layers|auto|none] [--eval-steps 50] [--reuse]
                                   [--qat] [--reconstruct]

Per cut (``CUTS``: ``prune_transformer`` settings, importance on the calibration sentences;
``--ratios`` adds ``prune_structured`` FFN cuts with least-squares reconstruction) -> recovery
training from the fp32 model on ``--train-count`` sentences of
``samples/minilm_corpus.py`` (package docstrings, none of the calibration/validation/test
sentences) for at most ``--minutes`` (AdamW, warm-up then cosine decay timed to end with
the minutes; batches padded to their longest sentence and length-bucketed; loss: cosine of
the pooled embedding plus, with ``--match layers``, every kept encoder layer's output against
the teacher's same layer per real token; validation every ``--eval-steps`` steps, the best
kept) -> the int8 steps of the ``small`` preset (4-bit embedding
table, then ``quantize: auto``). The int8-only row applies the same int8 steps to the fp32
model. Quality: cosine to the fp32 outputs on 200 held-out TEST sentences (the embedding for the
dynamo export; per real token for the TorchScript export's ``last_hidden_state``); recovery's
early stopping uses 200 other (validation) sentences. Speed: all models in one round-robin run
(``compare_many``), batch 1 and 8, sequence 64; "vs int8" divides by the int8-only model's
median. ``--reuse`` takes a recovered model already in the output folder instead of training
again (its training history is then not in the table). Writes ``<out>/recover.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks import environment, write_results

ROOT = Path(__file__).resolve().parents[1]

#: name -> prune_transformer settings (the names of ``bench_prune_transformer``'s table)
CUTS: dict[str, dict[str, Any]] = {
    "FFN 25 %": {"ffn": 0.25},
    "heads 25 %": {"heads": 0.25},
    "FFN 50 %": {"ffn": 0.5},
    "heads 50 %": {"heads": 0.5},
    "heads 25 % + FFN 25 %": {"heads": 0.25, "ffn": 0.25},
    "layers 6 -> 4": {"layers": 2},
    "layers 6 -> 3": {"layers": 3},
    "heads 50 % global + FFN 50 %": {"heads": 0.5, "head_scope": "global", "ffn": 0.5},
}

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
    parser.add_argument("--cuts", nargs="+", default=["FFN 50 %", "layers 6 -> 4"], choices=sorted(CUTS),
                        metavar="CUT", help="prune_transformer cuts: " + ", ".join(CUTS).replace("%", "%%"))
    parser.add_argument("--ratios", type=float, nargs="+", default=[], help="prune_structured FFN ratios too")
    parser.add_argument("--minutes", type=float, default=20.0, help="training time per cut (default 20)")
    parser.add_argument("--train-count", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--match", choices=["layers", "auto", "none"], default="layers")
    parser.add_argument("--eval-steps", type=int, default=50, help="validation every this many steps")
    parser.add_argument("--reuse", action="store_true", help="reuse cut, recovered and int8 models already in the folder")
    parser.add_argument("--qat", action="store_true",
                        help="recover with quantization in the loop (the int8 steps' own choices: dynamic int8 here)")
    parser.add_argument("--reconstruct", action="store_true",
                        help="least-squares refit of each cut layer's output projection before recovery")
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
    from onnx_compress.passes.prune.transformer import PruneTransformer
    from onnx_compress.pipeline import PipelineSettings, compress
    from onnx_compress.runtime import Runner, SessionSettings, compare_many
    from onnx_compress.stats import size_on_disk
    from onnx_compress.table import format_table
    from onnx_compress.passes.quantize.settings import QuantizeSettings
    from onnx_compress.training.qat import QatTarget
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
        if args.reuse and (folder / f"{name}.onnx").exists():
            return folder / f"{name}.onnx", 0.0
        start = time.perf_counter()
        outcome = compress(src, INT8_STEPS, calib=calib, val=val, metric="cosine", settings=settings)
        return outcome.save(folder / f"{name}.onnx"), time.perf_counter() - start

    rows: dict[str, dict[str, Any]] = {"fp32": {"path": fp32}}
    path, seconds = int8(fp32, "int8_only")
    rows["int8 only (small's int8 steps)"] = {"path": path, "seconds": seconds}
    normalized = Normalize()(load_model(fp32)).model
    recovery = RecoverySettings(epochs=10_000, lr=args.lr, batch_size=args.batch_size, max_minutes=args.minutes,
                                patience=10_000, steps_per_epoch=args.eval_steps,
                                match=() if args.match == "none" else (args.match,), device="cpu", qat=args.qat)
    qat_target = QatTarget(QuantizeSettings(mode="auto"), calibration=True) if args.qat else None
    cuts: list[tuple[str, str, Any]] = [
        (name, "".join(c if c.isalnum() else "_" for c in name) + ("_lsq" if args.reconstruct else ""),
         PruneTransformer(calibration=calib, reconstruct=args.reconstruct, **CUTS[name]))
        for name in args.cuts]
    cuts += [(f"FFN -{ratio:.0%} (prune_structured, LS reconstruct)", f"ffn{ratio:g}",
              PruneStructured(ratio=ratio, reconstruct=True, calibration=calib)) for ratio in args.ratios]
    for name, stem, cut_pass in cuts:
        cut_path = folder / f"{stem}.onnx"
        if not (args.reuse and cut_path.exists()):
            save_model(cut_pass(normalized).model, cut_path)
        rows[name] = {"path": cut_path, "speed": False}
        rows[f"{name} + int8"] = {"path": int8(cut_path, f"{stem}_int8")[0]}
        rec_path = folder / f"{stem}_recovered{'_qat' if args.qat else ''}.onnx"
        start = time.perf_counter()
        if args.reuse and rec_path.exists():
            rows[f"{name} + recovered"] = {"path": rec_path, "speed": False}
        else:
            recovered, result = recover(load_model(cut_path), normalized, train, val, recovery, progress=False,
                                        qat_target=qat_target)
            save_model(recovered, rec_path)
            rows[f"{name} + recovered"] = {"path": rec_path, "speed": False, "recovery": result.as_dict(),
                                           "seconds": time.perf_counter() - start}
        path, seconds = int8(rec_path, rec_path.stem + "_int8")
        rows[f"{name} + recovered + int8"] = {"path": path, "seconds": seconds}
    for row in rows.values():
        row["cosine_mean"], row["cosine_min"] = quality(row["path"])
        row["size_bytes"] = size_on_disk(row["path"])
        row["smaller"] = rows["fp32"]["size_bytes"] / row["size_bytes"] if "size_bytes" in rows["fp32"] else 1.0
    timed = [name for name, row in rows.items() if row.get("speed", True)]
    int8_only = timed.index("int8 only (small's int8 steps)")
    for batch, runs in ((1, 60), (8, 30)):
        medians = [lat.median_ms for lat in compare_many([rows[n]["path"] for n in timed], test.take(batch).inputs,
                                                         runs=runs, settings=session)]
        for name, median in zip(timed, medians):
            rows[name][f"speedup_b{batch}"] = medians[0] / median
            rows[name][f"vs_int8_b{batch}"] = medians[int8_only] / median
    print(f"\nall-MiniLM-L6-v2 ({args.export} export; 200 held-out test sentences, sequence 64; speed vs fp32 in one "
          "round-robin run)")
    print(format_table(["model", "cosine mean", "cosine min", "smaller", "speed b1", "speed b8", "b8 vs int8", "train s"], [
        [name, f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}", f"{r['smaller']:.2f}x",
         f"{r['speedup_b1']:.2f}x" if "speedup_b1" in r else "-", f"{r['speedup_b8']:.2f}x" if "speedup_b8" in r else "-",
         f"{r['vs_int8_b8']:.2f}x" if "vs_int8_b8" in r else "-",
         f"{r['recovery']['seconds']:.0f}" if "recovery" in r else "-"] for name, r in rows.items()]))
    for name, row in rows.items():
        if "recovery" in row:
            history, done = row["recovery"]["history"], 0.0
            points = []
            for h in history:
                done += h["seconds"]
                points.append(f"{done:.0f} s: {h['metric']:.4f}")
            print(f"  {name} ({row['recovery']['steps']} steps, {row['recovery']['train_cpu_seconds']:.0f} CPU s): "
                  + ", ".join(points))
        row["path"] = str(row["path"])
    write_results(args.out.resolve(), "recover", {"environment": environment(), "export": args.export, "rows": rows,
                                                  "minutes": args.minutes, "train_sentences": len(train)})
    return 0
