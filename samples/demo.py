"""The whole story on both seed models: train, export, compress under a budget, prove it.

Run:  python samples/demo.py [--out artifacts] [--preset small] [--max-drop 0.5]
(``make demo`` runs this.)

For the seed PyTorch CNN and the seed Keras CNN, on scikit-learn's real handwritten digits:

1. train (seconds on 2 cores) and export to ONNX with a parity check;
2. compress with a preset recipe (default ``small``: structured pruning, low-rank factoring,
   quantization) under "test-free" budget control: every pass is checked on the VALIDATION split
   and searched down or rolled back if top-1 drops more than ``--max-drop`` points; calibration
   (pruning's least-squares re-fit, int8 ranges) uses the training images;
3. validate the result on the held-out TEST split (never seen by any pass or by the budget):
   the verdict the story ends on is whether the TEST drop is within the budget (the budget
   check on validation adds one standard error of the drop, so that it holds beyond the 269
   validation images: ``onnx_compress.budget``); benchmark it side by side with the original,
   and write ``report.json`` / ``report.html`` with the test verdict in them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import onnx_compress as oc
from onnx_compress.pipeline import PipelineSettings, compress
from onnx_compress.report.files import save_report
from onnx_compress.report.text import render_text
from onnx_compress.runtime import SessionSettings, compare
from onnx_compress.table import format_table, human_bytes


def _torch_model(out: Path) -> Path:
    import torch

    from onnx_compress.samples import seed_torch_cnn

    torch.set_num_threads(2)
    model, splits = seed_torch_cnn.trained_model()
    splits.save(out)
    path = out / "seed_cnn.onnx"
    oc.export_torch(model, torch.from_numpy(splits.test.take(1).inputs["input"]), path)
    return path


def _keras_model(out: Path) -> Path:
    from onnx_compress.samples import seed_keras_cnn

    model, splits = seed_keras_cnn.trained_model()
    splits.save(out)
    keras_file = out / "seed_cnn.keras"
    model.save(keras_file)
    path = out / "seed_cnn.onnx"
    oc.export_keras(keras_file, path, example_inputs=splits.test.take(2).inputs["input"])
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="output folder (default artifacts)")
    parser.add_argument("--preset", default="small", help="compression preset (default small)")
    parser.add_argument("--max-drop", type=float, default=0.5, help="top-1 budget in points (default 0.5)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_compress.pipeline").setLevel(logging.INFO)  # a progress line per stage
    session = SessionSettings(provider="auto", intra_op_threads=args.threads)
    rows = []
    for name, build in (("torch", _torch_model), ("keras", _keras_model)):
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        original = build(folder)
        outcome = compress(
            original,
            args.preset,
            calib=folder / "train.npz",  # calibration on the training images; the budget never sees them
            val=folder / "val.npz",
            metric="top1",
            max_drop=args.max_drop,
            report_dir=folder / "report",
            settings=PipelineSettings(session=session),
        )
        compressed = outcome.save(folder / f"seed_cnn.{args.preset}.onnx")
        test = oc.validate(original, compressed, folder / "test.npz", "top1", settings=session)
        within = test.drop <= args.max_drop + 1e-9
        outcome.report.test = {"drop": test.drop, "stderr": test.details.get("stderr", float("nan")),
                               "samples": test.details.get("samples"), "reference": test.reference,
                               "candidate": test.candidate, "within_budget": within}
        save_report(outcome.report, folder / "report")
        speed = compare(original, compressed, oc.load_data(folder / "test.npz").take(8).inputs,
                        runs=200, settings=session)
        print(f"\n=== seed {name} CNN: {args.preset} preset, budget {args.max_drop} top-1 points on val ===")
        print(render_text(outcome.report))
        rows.append([
            f"seed {name} CNN",
            f"{test.reference:.2f}",
            f"{test.candidate:.2f}",
            f"{test.drop:+.2f} +- {test.details.get('stderr', float('nan')):.2f}",
            "yes" if within else "NO",
            f"{human_bytes(oc.model_stats(original).size_bytes)} -> {human_bytes(oc.model_stats(compressed).size_bytes)}",
            f"{outcome.report.size_ratio:.1f}x",
            f"{speed.speedup:.2f}x",
            f"{time.perf_counter() - start:.0f} s",
        ])
    print("\n=== held-out TEST split (never seen by any pass or the budget) ===")
    print(format_table(["model", "top-1 fp32 %", "top-1 compressed %", "drop +- se", f"within {args.max_drop:g}",
                        "size", "smaller", "faster (batch 8)", "time"], rows))
    held = sum(row[4] == "yes" for row in rows)
    print(f"\nverdict on the TEST split: {held} of {len(rows)} models within the {args.max_drop:g}-point budget "
          "that was checked on the validation split")
    print(f"\nreports: {args.out}/torch/report/report.html, {args.out}/keras/report/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
