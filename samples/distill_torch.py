"""Knowledge distillation in PyTorch: the seed CNN teaches a half-width student on real digits.

Run:  python samples/distill_torch.py [--epochs 12] [--seeds 0 1 2] [--out artifacts/distill_torch]

The seed CNN (``samples/seed_torch_cnn.py``, trained 12 epochs) is the teacher. For every seed,
one half-width student (``narrow_student(teacher, 0.5)``: 16/32 conv channels, 64 hidden units,
a quarter of the parameters) is built, copied, and the two identical copies are trained with the
same loop (``onnx_compress.training.distill.torch``), the same epochs, learning rate, batch
size and sample order:

- "labels alone": ``alpha=1`` (hard-label cross-entropy only; the teacher is not used);
- "distilled": ``alpha=0.5, temperature=4`` (half KL to the teacher's softened outputs).

It prints the test top-1 of the teacher and of both students, and how often each student agrees
with the teacher, per seed and on average, and says which won. The numbers are what they are: the
digits test split has 360 images, so one image is 0.28 points, and seeds differ by about a point.
The distilled student of the first seed is exported to ONNX (parity-checked) and its ONNX Runtime
accuracy is checked against PyTorch's.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

import onnx_compress as oc
from onnx_compress.samples import distill_report, seed_torch_cnn
from onnx_compress.samples.script import script_args
from onnx_compress.training.distill.torch import distill
from onnx_compress.training.narrow.torch import narrow_student
from onnx_compress.runtime import Runner, SessionSettings


def main() -> None:
    args = script_args(distill_report.parser(__doc__, epochs=12, out="artifacts/distill_torch"))
    torch.set_num_threads(2)
    start = time.perf_counter()

    teacher, splits = seed_torch_cnn.trained_model(epochs=12, seed=0)
    test = splits.test
    teacher_top1 = float((seed_torch_cnn.predict(teacher, test) == test.labels).mean() * 100)
    rows, results, exported = distill_report.run_students(
        args, teacher, splits, distill=distill, narrow=narrow_student, copy=copy.deepcopy, seed_all=torch.manual_seed,
        predict=seed_torch_cnn.predict)  # both students of a seed start from the same weights
    student_params = sum(p.numel() for p in exported.parameters())
    teacher_params = sum(p.numel() for p in teacher.parameters())

    onnx_path = args.out / "student.onnx"
    export = oc.export_torch(exported, torch.from_numpy(test.take(1).inputs["input"]), onnx_path)
    onnx_pred = Runner(onnx_path, SessionSettings(provider="cpu")).run_dataset(test)["output"].argmax(1)
    if not np.array_equal(onnx_pred, seed_torch_cnn.predict(exported, test)):
        raise SystemExit("ONNX Runtime and PyTorch disagree on the exported student")

    distill_report.report("PyTorch", args, (teacher_params, student_params), teacher_top1, rows, results)
    print(f"exported the first distilled student to {onnx_path} (parity max abs error {export.max_abs_error:.1e}, "
          f"ONNX Runtime predictions identical to PyTorch); total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
