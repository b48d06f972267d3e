"""The samples' quantization code runs on the trained seed model (slow: two quantizations and
their speed guards)."""

from __future__ import annotations

import re
import shutil

import pytest


@pytest.mark.slow
def test_seed_quantize_rows_report_static_and_dynamic(torch_seed_onnx, digits_nchw, tmp_path):
    from onnx_compress.samples import seed_quantize

    path = tmp_path / "seed_cnn.onnx"
    shutil.copy(torch_seed_onnx, path)
    rows = seed_quantize.quantize_rows(path, digits_nchw)
    text = "\n".join(f"{what}: {value}" for what, value in rows)
    for mode in ("static", "dynamic"):
        # each mode is reported either as applied (accuracy, size and speed rows, the model
        # written) or as not applied with a reason (nothing written): never both, never neither
        applied = re.search(rf"^{mode} int8: size / speed vs fp32 \(batch 8\): .* \(([\d.]+)x smaller\) / ", text, re.M)
        refused = re.search(rf"^{mode} int8: not applied: (.+)$", text, re.M)
        assert (applied is None) != (refused is None), text
        assert (tmp_path / f"seed_cnn_{mode}.onnx").exists() == (applied is not None)
        assert (re.search(rf"^{mode} int8 \(.+\): test top-1 \(%\): [\d.]+ \(drop ", text, re.M) is not None) \
            == (applied is not None)
        assert applied is None or float(applied.group(1)) > 1.5  # int8 weights: smaller, whatever the speed
        assert refused is None or refused.group(1).strip()
