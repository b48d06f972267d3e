"""The samples' quantization code runs on the trained seed model (slow: two quantizations and
their speed guards)."""

from __future__ import annotations

import shutil

import pytest


@pytest.mark.slow
def test_seed_quantize_rows_report_static_and_dynamic(torch_seed_onnx, digits_nchw, tmp_path):
    import seed_quantize

    path = tmp_path / "seed_cnn.onnx"
    shutil.copy(torch_seed_onnx, path)
    rows = seed_quantize.quantize_rows(path, digits_nchw)
    text = "\n".join(f"{what}: {value}" for what, value in rows)
    assert "static int8" in text and "dynamic int8" in text
    for mode in ("static", "dynamic"):
        if f"{mode} int8: size" in text:
            assert (tmp_path / f"seed_cnn_{mode}.onnx").exists()
