"""QAT vs post-training int8 on the pruned seed CNNs (PyTorch and Keras-born), side by side.

Run:  python -m benchmarks qat [--ratio 0.85] [--epochs 8] [--seeds 0 1]

Per seed CNN (trained on digits as the test fixtures train them, exported to ONNX): structured
pruning of ``--ratio`` of the channels/neurons (no reconstruction: a cut that costs top-1), then
the same recovery budget twice from the same cut, distilled from the fp32 model on the training
split with early stopping on the validation split:

- **PTQ**: recovery in float, then static int8 (QDQ, per-channel weights, MinMax calibration on
  the calibration split);
- **QAT**: recovery with ``qat: on`` (fake-quantized weights and activations of the nodes the
  quantize pass makes int8), then the same static int8 step, which takes the learned activation
  ranges instead of calibration's.

Top-1 on the 360 held-out TEST images (one image = 0.28 points), per recovery seed; size and
speed at batch 8 against the fp32 model in one round-robin run (``compare_many``; the machine
may be shared: the ratios are indicative). Writes ``<out>/qat.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks import environment, write_results

ROOT = Path(__file__).resolve().parents[1]


def _seed_models(folder: Path) -> dict[str, tuple[Path, Any]]:
    import keras
    from onnx_compress.samples import seed_keras_cnn, seed_torch_cnn
    import torch

    import onnx_compress as oc

    models: dict[str, tuple[Path, Any]] = {}
    nchw, nhwc = oc.load_digits("NCHW"), oc.load_digits("NHWC")
    path = folder / "torch_seed.onnx"
    if not path.exists():
        torch.manual_seed(0)
        model = seed_torch_cnn.SimpleModel()
        seed_torch_cnn.train(model, nchw.train, epochs=12, seed=0)
        oc.export_torch(model, torch.from_numpy(nchw.test.take(1).inputs["input"]), path)
    models["PyTorch seed CNN"] = (path, nchw)
    path = folder / "keras_seed.onnx"
    if not path.exists():
        keras.utils.set_random_seed(0)
        model = seed_keras_cnn.build_model()
        seed_keras_cnn.train(model, nhwc.train, epochs=10, seed=0)
        model.save(folder / "keras_seed.keras")
        oc.export_keras(folder / "keras_seed.keras", path, example_inputs=nhwc.test.take(2).inputs["input"])
    models["Keras seed CNN"] = (path, nhwc)
    return models


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.85, help="structured pruning ratio (default 0.85)")
    parser.add_argument("--epochs", type=int, default=8, help="recovery epochs, both ways (default 8)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="recovery seeds (default 0 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "benchmarks")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from onnx_compress.model_io import load_model, save_model
    from onnx_compress.passes.normalize import Normalize
    from onnx_compress.passes.prune.prune_structured_pass import PruneStructured
    from onnx_compress.passes.quantize import Quantize
    from onnx_compress.runtime import Runner, SessionSettings, compare_many
    from onnx_compress.stats import size_on_disk
    from onnx_compress.table import format_table
    from onnx_compress.training.recover import RecoverySettings, recover

    torch.set_num_threads(args.threads)
    folder = args.out.resolve() / "qat"
    folder.mkdir(parents=True, exist_ok=True)
    session = SessionSettings(provider="cpu", intra_op_threads=args.threads)

    def top1(path: Path, data: Any) -> float:
        runner = Runner(path, session)
        return float((runner.run_dataset(data)[runner.output_names[0]].argmax(1) == data.labels).mean() * 100)

    results: dict[str, Any] = {}
    table = []
    for label, (fp32, digits) in _seed_models(folder).items():
        stem = fp32.stem
        normalized = Normalize()(load_model(fp32)).model
        cut = PruneStructured(ratio=args.ratio)(normalized).model
        cut_path = save_model(cut, folder / f"{stem}_cut.onnx")
        rows: dict[str, dict[str, Any]] = {"fp32": {"paths": [fp32]}, "cut": {"paths": [cut_path]},
                                           "cut + int8": {"paths": []}, "PTQ": {"paths": [], "float": []},
                                           "QAT": {"paths": [], "float": []}}
        plain = Quantize(mode="static", guard="off", calibration=digits.calib)(cut).model
        rows["cut + int8"]["paths"].append(save_model(plain, folder / f"{stem}_cut_int8.onnx"))
        for seed in args.seeds:
            for name, qat in (("PTQ", "off"), ("QAT", "on")):
                settings = RecoverySettings(epochs=args.epochs, lr=args.lr, patience=args.epochs, seed=seed, qat=qat)
                recovered, result = recover(cut, normalized, digits.train, digits.val, settings, progress=False)
                float_path = save_model(recovered, folder / f"{stem}_{name}_{seed}_float.onnx")
                int8 = Quantize(mode="static", guard="off", calibration=digits.calib)(recovered).model
                rows[name]["paths"].append(save_model(int8, folder / f"{stem}_{name}_{seed}_int8.onnx"))
                rows[name]["float"].append(top1(float_path, digits.test))
                rows[name].setdefault("history", []).append([h.metric for h in result.history])
        for row in rows.values():
            row["top1"] = [top1(p, digits.test) for p in row["paths"]]
            row["size_bytes"] = size_on_disk(row["paths"][0])
        timed = ["fp32", "cut + int8", "PTQ", "QAT"]
        medians = [lat.median_ms for lat in compare_many([rows[n]["paths"][0] for n in timed],
                                                         digits.test.take(8).inputs, runs=40, settings=session)]
        for name, median in zip(timed, medians):
            rows[name]["speedup_b8"] = medians[0] / median
        for name, row in rows.items():
            row["smaller"] = rows["fp32"]["size_bytes"] / row["size_bytes"]
            floats = f"{np.mean(row['float']):.2f}" if row.get("float") else "-"
            table.append([label, name, " / ".join(f"{t:.2f}" for t in row["top1"]), floats,
                          f"{row['smaller']:.1f}x", f"{row['speedup_b8']:.2f}x" if "speedup_b8" in row else "-"])
            row["paths"] = [str(p) for p in row["paths"]]
        results[label] = rows
    print(f"\nQAT vs post-training int8 after {args.ratio:.0%} structured pruning, {args.epochs} recovery epochs, "
          f"seeds {args.seeds}; top-1 on 360 held-out test images; speed vs fp32 at batch 8 in one run")
    print(format_table(["model", "row", "test top1 (int8 rows: per seed)", "its float top1 (mean)", "smaller", "speed b8"], table))
    write_results(args.out.resolve(), "qat", {"environment": environment(), "ratio": args.ratio,
                                              "epochs": args.epochs, "seeds": args.seeds, "results": results})
    return 0
