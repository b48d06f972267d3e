"""Knowledge distillation in Keras: the seed CNN teaches a half-width student on real digits.

Run:  python samples/distill_keras.py [--epochs 10] [--seeds 0 1 2] [--out artifacts/distill_keras]

The seed Keras CNN (``samples/seed_keras_cnn.py``, trained 10 epochs) is the teacher. For every
seed, one half-width student (``narrow_student(teacher, 0.5)``: Conv2D 16/32, Dense 64, a
quarter of the parameters, the same softmax output) is built, cloned with the same weights, and
the two identical copies are trained with the same loop
(``onnx_compress.training.distill.tensorflow``), epochs, learning rate, batch size and sample
order:

- "labels alone": ``alpha=1`` (hard-label cross-entropy only; the teacher is not used);
- "distilled": ``alpha=0.5, temperature=4`` (half KL to the teacher's softened outputs; the
  teacher's softmax probabilities are detected and taken to log space).

It prints the test top-1 of the teacher and both students and their agreement with the teacher,
per seed and on average, and says which won — honestly: the digits test split has 360 images,
one image is 0.28 points. The first distilled student is exported to ONNX (parity-checked) and
its ONNX Runtime predictions are checked against Keras'.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import onnx_compress as oc  # noqa: E402
from onnx_compress.samples import distill_report, seed_keras_cnn  # noqa: E402
from onnx_compress.samples.script import script_args  # noqa: E402
from onnx_compress.training.distill.tensorflow import distill  # noqa: E402
from onnx_compress.training.narrow.tensorflow import narrow_student  # noqa: E402
from onnx_compress.runtime import Runner, SessionSettings  # noqa: E402


def _copy(model: keras.Model) -> keras.Model:
    """A clone with the same weights (both students of a seed start from them)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def main() -> None:
    args = script_args(distill_report.parser(__doc__, epochs=10, out="artifacts/distill_keras"))
    start = time.perf_counter()

    teacher, splits = seed_keras_cnn.trained_model(epochs=10, seed=0)
    test = splits.test
    teacher_top1 = float((seed_keras_cnn.predict(teacher, test) == test.labels).mean() * 100)
    rows, results, exported = distill_report.run_students(
        args, teacher, splits, distill=distill, narrow=narrow_student, copy=_copy, seed_all=keras.utils.set_random_seed,
        predict=seed_keras_cnn.predict)

    onnx_path = args.out / "student.onnx"
    export = oc.export_keras(exported, onnx_path, example_inputs=test.take(2).inputs["input"])
    onnx_pred = Runner(onnx_path, SessionSettings(provider="cpu")).run_dataset(test)["output"].argmax(1)
    if not np.array_equal(onnx_pred, seed_keras_cnn.predict(exported, test)):
        raise SystemExit("ONNX Runtime and Keras disagree on the exported student")

    distill_report.report("Keras", args, (teacher.count_params(), exported.count_params()), teacher_top1, rows, results)
    print(f"exported the first distilled student to {onnx_path} (parity max abs error {export.max_abs_error:.1e}, "
          f"ONNX Runtime predictions identical to Keras); total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
