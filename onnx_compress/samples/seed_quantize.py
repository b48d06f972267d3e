"""Static and dynamic int8 rows for the seed samples' tables (used by ``samples/seed_torch_cnn.py``
and ``samples/seed_keras_cnn.py``).

:func:`quantize_rows` normalizes the exported model, quantizes it with
``onnx_compress.passes.Quantize`` in ``static`` mode (calibrated on the digits' calibration split,
budget checked on the validation split) and in ``dynamic`` mode, writes both models next to the
float one, and returns table rows: test top-1, size against fp32, and the speed the pass's guard
measured against fp32 (interleaved, batch 8, on this CPU).
"""

from __future__ import annotations

from pathlib import Path

import onnx_compress as oc
from onnx_compress.model_io import load_model, save_model
from onnx_compress.passes import Normalize, Quantize
from onnx_compress.table import human_bytes

__all__ = ["quantize_rows"]


def quantize_rows(onnx_path: Path, splits: oc.datasets.DigitsSplits, *, threads: int = 2,
                  max_drop: float = 0.5) -> list[list[str]]:
    """Quantize ``onnx_path`` statically and dynamically; rows ``[what, value]`` for the table."""
    model = Normalize()(load_model(onnx_path)).model
    rows = []
    for mode in ("static", "dynamic"):
        result = Quantize(mode=mode, calibration=splits.calib, validation=splits.val, max_drop=max_drop,
                          threads=threads)(model)
        if not result.modified:
            rows.append([f"{mode} int8", "not applied: " + result.nothing_to_do.split(" (")[0]])
            continue
        out = onnx_path.with_name(f"{onnx_path.stem}_{mode}.onnx")
        save_model(result.model, out)
        score = oc.validate(onnx_path, out, splits.test, "top1")
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(result.quantized_op_types.items()))
        speed = f"{result.speed.speedup:.2f}x" if result.speed is not None else "not measured"
        rows.append([f"{mode} int8 ({ops}): test top-1 (%)", f"{score.candidate:.2f} (drop {score.drop:+.2f})"])
        rows.append([f"{mode} int8: size / speed vs fp32 (batch 8)",
                     f"{human_bytes(result.size_after)} ({result.size_ratio:.2f}x smaller) / {speed}"])
    return rows
